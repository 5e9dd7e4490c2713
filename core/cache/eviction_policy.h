#ifndef MOE_ROUTER_CORE_CACHE_EVICTION_POLICY_H_
#define MOE_ROUTER_CORE_CACHE_EVICTION_POLICY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/base/types.h"

namespace moe_router {

/// What a policy may know of a cache entry when ranking it.
struct EntryView {
  ExpertKey key;
  uint64_t last_access = 0;  // cache tick of the last access (0: never)
  uint64_t accesses = 0;     // accesses so far, kept across evictions
  /// Layer-aware use estimate: an EMA over the visits of the entry's layer of
  /// "this expert was used in that visit", as of `reuse_visit`.
  double reuse = 0;
  uint64_t reuse_visit = 0;
};

/// What a policy may know of the cache as a whole.
struct CacheClock {
  uint64_t now = 0;            // current tick
  uint32_t current_layer = 0;  // layer of the step being served
  uint32_t num_layers = 1;
  std::vector<uint64_t> layer_visits;  // visits so far, per layer
};

/// Ranks cache entries for eviction: the entry with the lowest Keep() goes
/// first (ties: least recently accessed, then lowest key). The cache owns
/// the per-entry bookkeeping and hands it to the policy as EntryView; a
/// policy may keep state of its own about the population (adaptive does).
class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string name() const = 0;
  /// Called once per eviction decision with the evictable entries, before
  /// Keep() is asked of each (lets a policy look at the population).
  virtual void Prepare(absl::Span<const EntryView> /*candidates*/, const CacheClock& /*clock*/) {}
  virtual double Keep(const EntryView& entry, const CacheClock& clock) const = 0;
  /// Keep() of each entry into `out` (its size): one virtual call for a whole
  /// ranking, so a policy can inline its Keep() in the loop.
  virtual void KeepEach(absl::Span<const EntryView> entries, const CacheClock& clock,
                        absl::Span<double> out) const {
    for (size_t i = 0; i < entries.size(); ++i) out[i] = Keep(entries[i], clock);
  }
  /// Whether Keep() depends on which entries Prepare() was shown, so that
  /// a ranking goes stale as soon as one of them is evicted.
  virtual bool RanksByPopulation() const { return false; }
};

/// The decay of the layer-aware reuse EMA per visit of the layer.
inline constexpr double kReuseRate = 0.3;

/// The reuse EMA recorded at visit `from`, decayed to visit `to`: the visits
/// in between had no use.
double DecayReuse(double reuse, uint64_t from, uint64_t to);
/// Current reuse estimate of an entry, as of its layer's latest visit.
double CurrentReuse(const EntryView& entry, const CacheClock& clock);
/// The reuse EMA after a use at visit `visit` of the entry's layer, the
/// previous use being at `last_visit`: idle visits decay it, this use adds.
double ReuseAfterUse(double reuse, uint64_t last_visit, uint64_t visit);
/// How a prefetched expert is judged: as if it were used now, since that is
/// the prediction that made it worth loading.
EntryView AsIfUsedNow(EntryView entry, const CacheClock& clock);

/// Which entries to evict, in order, so that `need` more bytes fit.
struct EvictionPlan {
  std::vector<ExpertKey> victims;
  uint64_t freed = 0;  // < need: the evictable entries are not enough
  /// A prefetch stops at the first entry the policy values at least as much
  /// as the incoming expert; that entry, when it did.
  std::optional<ExpertKey> valued_more;
};

/// The evictable entries of a cache in the one eviction order every cache
/// uses: lowest Keep() first, ties to the least recently accessed, then the
/// lowest key. Ranked once and taken lowest first, so a booking that evicts
/// one entry sorts nothing, and several bookings can share one ranking.
class EvictionQueue {
 public:
  /// Ranks `candidates` (the size of candidates[i] in bytes[i]).
  void Rank(EvictionPolicy& policy, absl::Span<const EntryView> candidates,
            absl::Span<const uint64_t> bytes, const CacheClock& clock);
  /// Takes the lowest-ranked entries until `need` bytes are freed. Takes
  /// nothing if the queue cannot free that much (freed is then what it
  /// holds) or, for a prefetch judged at `incoming_keep`, if an entry the
  /// policy values at least as much would go first (valued_more). Writes
  /// into `plan`, reusing its buffer.
  void Take(uint64_t need, std::optional<double> incoming_keep, EvictionPlan* plan);

 private:
  struct Ranked {
    double keep;
    uint64_t last_access;
    ExpertKey key;
    uint64_t bytes;
  };
  // A functor, not a function pointer, so the heap algorithms inline it.
  struct After {
    bool operator()(const Ranked& a, const Ranked& b) const {
      return std::tie(a.keep, a.last_access, a.key) > std::tie(b.keep, b.last_access, b.key);
    }
  };
  std::vector<Ranked> heap_;   // a min-heap under After
  std::vector<double> keeps_;  // scratch for KeepEach
  uint64_t bytes_ = 0;         // held by the entries in heap_
};

/// One booking's plan: EvictionQueue ranked and taken once. For a prefetch,
/// `incoming` is the prefetched expert (see AsIfUsedNow); null for demand.
EvictionPlan PlanEviction(EvictionPolicy& policy, absl::Span<const EntryView> candidates,
                          absl::Span<const uint64_t> bytes, const CacheClock& clock, uint64_t need,
                          const EntryView* incoming);

struct EvictionPolicyOptions {
  /// For "affinity": the expert's affinity score.
  std::function<double(ExpertKey)> affinity;
  /// For "adaptive": LFU when max/mean access count of the evictable entries
  /// is at least this, else LRU.
  double adaptive_skew = 2.0;
};

/// The online policies, the names MakeEvictionPolicy accepts, for help
/// texts. (The offline optimum lives in eval/belady_policy.h.)
std::vector<std::string> EvictionPolicyNames();

/// INVALID_ARGUMENT naming the policies there are, unless `name` is one.
absl::Status CheckEvictionPolicyName(absl::string_view name);

/// lru | lfu | affinity | adaptive | layer_reuse. An unknown name, or a
/// policy missing the function it needs, is INVALID_ARGUMENT.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(
    absl::string_view name, const EvictionPolicyOptions& options);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_EVICTION_POLICY_H_
