#ifndef MOE_ROUTER_TESTS_TESTING_RANKING_ORACLE_H_
#define MOE_ROUTER_TESTS_TESTING_RANKING_ORACLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/base/types.h"
#include "core/cache/eviction_index.h"
#include "core/cache/eviction_policy.h"

namespace moe_router::testing {

/// The eviction decision as every cache made it before the index: all
/// evictable entries ranked per decision (the policy prepared over them,
/// Keep() of each, a heap by keep, Tie() and key), the lowest taken
/// until `need` is freed, a prefetch dropped at the first entry valued at
/// least as much as `incoming`. The oracle the index is compared with.
EvictionIndex::Outcome RankAllAndTake(EvictionPolicy& policy,
                                      const std::vector<EntryView>& candidates,
                                      const std::vector<uint64_t>& bytes, const CacheClock& clock,
                                      uint64_t need, const EntryView* incoming, EvictionPlan* plan);

/// While alive, checks every decision of every EvictionIndex in the process
/// against RankAllAndTake over the same members: outcome, victims in order,
/// bytes freed, the entry valued more. Counts decisions and differences and
/// keeps the first few differences, described.
class RankingOracle final : public EvictionIndex::Auditor {
 public:
  /// With `keep_members`, the members at each decision are kept too.
  explicit RankingOracle(bool keep_members = false);
  ~RankingOracle();
  void Check(const EvictionIndex& index, const EvictionIndex::Source& source,
             const CacheClock& clock, EvictionPolicy& policy, uint64_t need,
             const EntryView* incoming, EvictionIndex::Outcome outcome,
             const EvictionPlan& plan) override;

  uint64_t decisions() const;
  uint64_t differences() const;
  /// Decisions that evicted, and victims taken, over all decisions.
  uint64_t victims() const;
  std::vector<std::string> first_differences() const;
  /// The members (evictable entries) at each decision so far.
  std::vector<std::vector<ExpertKey>> members() const;

 private:
  mutable absl::Mutex mu_;
  uint64_t decisions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t differences_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t victims_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> first_ ABSL_GUARDED_BY(mu_);
  const bool keep_members_;
  std::vector<std::vector<ExpertKey>> members_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_RANKING_ORACLE_H_
