#include "tests/testing/ranking_oracle.h"

#include <algorithm>
#include <optional>
#include <tuple>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe_router::testing {
namespace {

struct Ranked {
  double keep;
  uint64_t tie;
  ExpertKey key;
  uint64_t bytes;
};
struct After {
  bool operator()(const Ranked& a, const Ranked& b) const {
    return std::tie(a.keep, a.tie, a.key) > std::tie(b.keep, b.tie, b.key);
  }
};

std::string Describe(EvictionIndex::Outcome outcome, const EvictionPlan& plan) {
  std::vector<std::string> victims;
  for (const ExpertKey& k : plan.victims) victims.push_back(k.ToString());
  return absl::StrFormat("outcome %d victims [%s] freed %d valued_more %s",
                         static_cast<int>(outcome), absl::StrJoin(victims, " "), plan.freed,
                         plan.valued_more ? plan.valued_more->ToString() : "-");
}

}  // namespace

EvictionIndex::Outcome RankAllAndTake(EvictionPolicy& policy,
                                      const std::vector<EntryView>& candidates,
                                      const std::vector<uint64_t>& bytes, const CacheClock& clock,
                                      uint64_t need, const EntryView* incoming,
                                      EvictionPlan* plan) {
  policy.Prepare(candidates);
  std::vector<Ranked> heap;
  uint64_t total = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    heap.push_back({policy.Keep(candidates[i], clock),
                    policy.OrderTie(policy.ActiveOrder(clock), candidates[i]), candidates[i].key,
                    bytes[i]});
    total += bytes[i];
  }
  std::make_heap(heap.begin(), heap.end(), After());
  std::optional<double> incoming_keep;
  if (incoming != nullptr) incoming_keep = policy.Keep(*incoming, clock);
  plan->victims.clear();
  plan->freed = 0;
  plan->valued_more.reset();
  if (total < need) {
    plan->freed = total;
    return EvictionIndex::Outcome::kNoRoom;
  }
  auto end = heap.end();
  while (plan->freed < need) {
    std::pop_heap(heap.begin(), end, After());
    --end;
    if (incoming_keep && end->keep >= *incoming_keep) {
      plan->valued_more = end->key;
      plan->victims.clear();
      plan->freed = 0;
      return EvictionIndex::Outcome::kValuedMore;
    }
    plan->freed += end->bytes;
    plan->victims.push_back(end->key);
  }
  return EvictionIndex::Outcome::kTaken;
}

RankingOracle::RankingOracle(bool keep_members) : keep_members_(keep_members) {
  EvictionIndex::SetAuditorForTesting(this);
}

RankingOracle::~RankingOracle() { EvictionIndex::SetAuditorForTesting(nullptr); }

void RankingOracle::Check(const EvictionIndex& index, const EvictionIndex::Source& source,
                          const CacheClock& clock, EvictionPolicy& policy, uint64_t need,
                          const EntryView* incoming, EvictionIndex::Outcome outcome,
                          const EvictionPlan& plan) {
  std::vector<EntryView> candidates;
  std::vector<uint64_t> bytes;
  std::vector<ExpertKey> keys;
  index.ForEach([&](size_t slot) {
    candidates.push_back(source.View(slot));
    bytes.push_back(source.Bytes(slot));
    keys.push_back(candidates.back().key);
  });
  EvictionPlan expected;
  const EvictionIndex::Outcome expected_outcome =
      RankAllAndTake(policy, candidates, bytes, clock, need, incoming, &expected);
  // The index prepared the policy over its members; the oracle prepared it
  // again over the same, which changes nothing.
  absl::MutexLock lock(&mu_);
  ++decisions_;
  victims_ += plan.victims.size();
  if (keep_members_) members_.push_back(std::move(keys));
  if (expected_outcome == outcome && expected.victims == plan.victims &&
      expected.freed == plan.freed && expected.valued_more == plan.valued_more) {
    return;
  }
  ++differences_;
  if (first_.size() < 5) {
    first_.push_back(absl::StrFormat(
        "decision %d of %s (need %d, %d members): index %s, oracle %s", decisions_, policy.name(),
        need, candidates.size(), Describe(outcome, plan), Describe(expected_outcome, expected)));
  }
}

uint64_t RankingOracle::decisions() const {
  absl::MutexLock lock(&mu_);
  return decisions_;
}

uint64_t RankingOracle::differences() const {
  absl::MutexLock lock(&mu_);
  return differences_;
}

uint64_t RankingOracle::victims() const {
  absl::MutexLock lock(&mu_);
  return victims_;
}

std::vector<std::string> RankingOracle::first_differences() const {
  absl::MutexLock lock(&mu_);
  return first_;
}

std::vector<std::vector<ExpertKey>> RankingOracle::members() const {
  absl::MutexLock lock(&mu_);
  return members_;
}

}  // namespace moe_router::testing
