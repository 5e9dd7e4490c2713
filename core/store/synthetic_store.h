#ifndef MOE_ROUTER_CORE_STORE_SYNTHETIC_STORE_H_
#define MOE_ROUTER_CORE_STORE_SYNTHETIC_STORE_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/store/expert_store.h"

namespace moe_router {

struct SyntheticStoreOptions {
  uint32_t num_layers = 32;
  uint32_t num_experts = 8;
  /// Bytes per expert, per precision variant; the first is the default.
  std::vector<std::pair<std::string, uint64_t>> variants = {{"default", 1 << 20}};

  absl::Status Validate() const;
};

/// Deterministic experts of configured sizes and no files: the same key and
/// precision always give the same bytes, and every 4 KiB page differs
/// between experts. The embedded default store, so everything runs without a
/// checkpoint. A load costs about what a read from the page cache would (a
/// copy of one random pattern, stamped per expert), so benchmarks on it
/// measure the service rather than a random number generator.
class SyntheticStore final : public ExpertStore {
 public:
  static absl::StatusOr<std::unique_ptr<SyntheticStore>> Create(
      const SyntheticStoreOptions& options);

  std::vector<std::string> Precisions() const override;
  absl::StatusOr<ExpertInfo> Info(ExpertKey key, const std::string& precision) const override;
  absl::StatusOr<std::shared_ptr<const ExpertData>> Load(
      ExpertKey key, const std::string& precision) const override;
  std::string Describe() const override;

 private:
  explicit SyntheticStore(const SyntheticStoreOptions& options);
  absl::StatusOr<uint64_t> Bytes(ExpertKey key, const std::string& precision) const;

  SyntheticStoreOptions options_;
  /// Random bytes, as long as the largest variant.
  std::vector<uint8_t> pattern_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_STORE_SYNTHETIC_STORE_H_
