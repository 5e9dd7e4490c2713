#ifndef MOE_ROUTER_TESTS_TESTING_FIXED_RANK_POLICY_H_
#define MOE_ROUTER_TESTS_TESTING_FIXED_RANK_POLICY_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/cache/eviction_policy.h"

namespace moe_router::testing {

/// An eviction policy whose ranking the test sets: Keep() is the value given
/// for the key (0 if none), and every Prepare() records the candidates the
/// cache offered. Shared state, so the test keeps a handle after the cache
/// took the policy.
class FixedRankPolicy final : public EvictionPolicy {
 public:
  struct State {
    std::map<ExpertKey, double> keep;
    std::vector<std::vector<ExpertKey>> offered;  // per eviction decision
  };
  explicit FixedRankPolicy(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::string name() const override { return "fixed_rank"; }
  void Prepare(absl::Span<const EntryView> candidates, const CacheClock&) override {
    std::vector<ExpertKey> keys;
    for (const EntryView& e : candidates) keys.push_back(e.key);
    state_->offered.push_back(std::move(keys));
  }
  double Keep(const EntryView& entry, const CacheClock&) const override {
    const auto it = state_->keep.find(entry.key);
    return it == state_->keep.end() ? 0 : it->second;
  }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_FIXED_RANK_POLICY_H_
