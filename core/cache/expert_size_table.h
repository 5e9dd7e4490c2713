#ifndef MOE_ROUTER_CORE_CACHE_EXPERT_SIZE_TABLE_H_
#define MOE_ROUTER_CORE_CACHE_EXPERT_SIZE_TABLE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/base/types.h"
#include "core/store/expert_store.h"

namespace moe_router {

/// The size of every expert in every precision variant of a store, read
/// once, so that worker-cache bookkeeping never calls the store.
class ExpertSizeTable {
 public:
  /// At most 254 variants. An expert a variant lacks has size 0 there.
  static absl::StatusOr<std::shared_ptr<const ExpertSizeTable>> Build(const ExpertStore& store,
                                                                      uint32_t num_layers,
                                                                      uint32_t num_experts);
  /// From sizes received from the service: `bytes` is [variant][layer][expert].
  static absl::StatusOr<std::shared_ptr<const ExpertSizeTable>> FromSizes(
      std::vector<std::string> variants, uint32_t num_layers, uint32_t num_experts,
      std::vector<uint64_t> bytes);
  const std::vector<std::string>& variants() const { return variants_; }
  /// [variant][layer][expert], as FromSizes takes it.
  const std::vector<uint64_t>& bytes() const { return bytes_; }
  uint64_t Bytes(ExpertKey key, uint8_t variant) const {
    return bytes_[variant * slots_ + size_t{key.layer} * num_experts_ + key.expert];
  }
  /// The variant's index, or the default variant (0) for a name the store lacks.
  uint8_t VariantIndex(const std::string& precision) const;
  /// The smallest expert of any variant: a budget below it holds nothing.
  uint64_t smallest() const { return smallest_; }
  uint64_t largest() const { return largest_; }

 private:
  ExpertSizeTable() = default;
  uint32_t num_experts_ = 0;
  size_t slots_ = 0;
  std::vector<std::string> variants_;
  std::vector<uint64_t> bytes_;  // [variant][layer][expert]
  uint64_t smallest_ = 0;
  uint64_t largest_ = 0;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_EXPERT_SIZE_TABLE_H_
