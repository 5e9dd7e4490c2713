#include "eval/belady_policy.h"

#include <string>
#include <utility>

namespace moe_router {
namespace {

class BeladyPolicy final : public EvictionPolicy {
 public:
  explicit BeladyPolicy(std::function<uint64_t(ExpertKey, uint64_t)> next_use)
      : next_use_(std::move(next_use)) {}
  std::string name() const override { return kBeladyPolicyName; }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return -static_cast<double>(next_use_(e.key, clock.now));
  }

 private:
  std::function<uint64_t(ExpertKey, uint64_t)> next_use_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> MakeBeladyPolicy(
    std::function<uint64_t(ExpertKey, uint64_t now)> next_use) {
  return std::make_unique<BeladyPolicy>(std::move(next_use));
}

}  // namespace moe_router
