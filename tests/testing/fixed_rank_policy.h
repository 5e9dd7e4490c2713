#ifndef MOE_ROUTER_TESTS_TESTING_FIXED_RANK_POLICY_H_
#define MOE_ROUTER_TESTS_TESTING_FIXED_RANK_POLICY_H_

#include <map>
#include <memory>
#include <string>

#include "core/cache/eviction_policy.h"

namespace moe_router::testing {

/// An eviction policy whose ranking the test sets: Keep() is the value given
/// for the key (0 if none). Shared state, so the test keeps a handle after
/// the cache took the policy; a value must be set before the cache learns
/// of the entry (it is ranked when it becomes evictable or is used).
class FixedRankPolicy final : public EvictionPolicy {
 public:
  struct State {
    std::map<ExpertKey, double> keep;
  };
  explicit FixedRankPolicy(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::string name() const override { return "fixed_rank"; }
  double Keep(const EntryView& entry, const CacheClock&) const override {
    const auto it = state_->keep.find(entry.key);
    return it == state_->keep.end() ? 0 : it->second;
  }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_FIXED_RANK_POLICY_H_
