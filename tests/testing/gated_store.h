#ifndef MOE_ROUTER_TESTS_TESTING_GATED_STORE_H_
#define MOE_ROUTER_TESTS_TESTING_GATED_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "core/store/expert_store.h"
#include "core/store/synthetic_store.h"

namespace moe_router::testing {

/// A synthetic store (4 layers x 8 experts of `bytes`) with a gate: loads
/// block until Open(), and the order of loads is recorded, so a test can
/// hold the paging workers and observe queue order.
class GatedStore final : public ExpertStore {
 public:
  explicit GatedStore(uint64_t bytes);
  void Open();
  std::vector<ExpertKey> loaded() const;
  /// Loads blocked at the gate now.
  int waiting() const;

  std::vector<std::string> Precisions() const override;
  absl::StatusOr<ExpertInfo> Info(ExpertKey key, const std::string& precision) const override;
  absl::StatusOr<std::shared_ptr<const ExpertData>> Load(
      ExpertKey key, const std::string& precision) const override;
  std::string Describe() const override { return "gated"; }

 private:
  std::unique_ptr<SyntheticStore> inner_;
  mutable absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
  mutable int waiting_ ABSL_GUARDED_BY(mu_) = 0;
  mutable std::vector<ExpertKey> loaded_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_GATED_STORE_H_
