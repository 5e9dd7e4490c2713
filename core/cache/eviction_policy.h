#ifndef MOE_ROUTER_CORE_CACHE_EVICTION_POLICY_H_
#define MOE_ROUTER_CORE_CACHE_EVICTION_POLICY_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
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
  /// Accesses since it last left the cache (vllm_lfru's frequency, which an
  /// eviction resets).
  uint64_t resident_accesses = 0;
  /// Its layer's access count (CacheClock::layer_accesses) at its last access.
  uint64_t layer_access = 0;
  /// Cache tick at which it last became resident (0: never).
  uint64_t admitted = 0;
  /// llama.cpp's CRF (combined recency and frequency) as of its last use
  /// (`reuse_visit`): one per visit that used it, halved every
  /// kCrfHalfLifeVisits visits of its layer, kept across evictions.
  double crf = 0;
};

/// What a policy may know of the cache as a whole.
struct CacheClock {
  uint64_t now = 0;            // current tick
  uint32_t current_layer = 0;  // layer of the step being served
  uint32_t num_layers = 1;
  std::vector<uint64_t> layer_visits;    // visits so far, per layer
  std::vector<uint64_t> layer_accesses;  // accesses so far, per layer
  /// Tokens of each layer's latest visit (a call's: a batch, a prompt).
  std::vector<uint32_t> layer_tokens;
  /// The tick before the first access of the current forward pass: a pass
  /// begins at a step whose layer does not follow the previous step's.
  uint64_t pass_start = 0;

  uint32_t LayerTokens(uint32_t layer) const {
    return layer < layer_tokens.size() ? layer_tokens[layer] : 1;
  }
  /// The tokens of the step being served.
  uint32_t StepTokens() const { return LayerTokens(current_layer); }
};

/// The order in which a step touches its experts, which sets their recency.
enum class StepOrder : uint8_t {
  kAsRouted,            // the order the router lists them (ours)
  kHitsThenMissesById,  // resident ones as listed, then missing ones by id
  kDistinctAsRouted,    // each once, at its first place as listed
};

/// The evictable entries' number and access counts: what a policy that
/// ranks by its population (adaptive) decides by.
struct PopulationStats {
  size_t count = 0;
  uint64_t max_accesses = 0;
  uint64_t sum_accesses = 0;
};

/// When a policy's Keep() of an entry changes, which tells an EvictionIndex
/// how to keep the order between decisions instead of ranking every entry.
enum class KeyScope : uint8_t {
  /// Only when that entry is accessed (lru, lfu, belady).
  kEntry,
  /// Keep() = CombineLayerKey(layer, LayerKey(entry)): LayerKey changes when
  /// the entry is accessed or its layer's stamp (LayerStamps()) moves, and
  /// CombineLayerKey, non-decreasing in the key, when CombineStamp() moves
  /// (affinity, layer_reuse).
  kLayer,
};

/// Ranks cache entries for eviction: the entry with the lowest Keep() goes
/// first (ties: the lower Tie(), by default the least recently accessed,
/// then the lowest key). The cache owns
/// the per-entry bookkeeping and hands it to the policy as EntryView; a
/// policy may keep state of its own about the population (adaptive does).
class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string name() const = 0;
  virtual double Keep(const EntryView& entry, const CacheClock& clock) const = 0;
  /// Whether Keep() depends on which entries are evictable (see
  /// PrepareFromStats), so that a ranking goes stale as soon as one of them
  /// is evicted.
  virtual bool RanksByPopulation() const { return false; }
  /// Called once per eviction decision, before Keep() is asked, with the
  /// evictable entries' statistics; only when RanksByPopulation().
  virtual void PrepareFromStats(const PopulationStats& /*stats*/) {}
  /// PrepareFromStats with the statistics of `candidates`.
  void Prepare(absl::Span<const EntryView> candidates);

  // How an EvictionIndex keeps the order (see KeyScope).
  virtual KeyScope key_scope() const { return KeyScope::kEntry; }
  virtual double LayerKey(const EntryView& entry, const CacheClock& clock) const {
    return Keep(entry, clock);
  }
  virtual double CombineLayerKey(uint32_t /*layer*/, double key,
                                 const CacheClock& /*clock*/) const {
    return key;
  }
  /// Whether CombineLayerKey returns the key itself (no two keys of a layer
  /// combine into one).
  virtual bool CombinesByIdentity() const { return true; }
  /// Each layer's stamp into `out` (one per layer): one call per decision.
  virtual void LayerStamps(const CacheClock& /*clock*/, absl::Span<uint64_t> out) const {
    std::fill(out.begin(), out.end(), 0);
  }
  virtual uint64_t CombineStamp(const CacheClock& /*clock*/) const { return 0; }
  /// The orders a policy picks from per decision, each kEntry: Keep() and
  /// Tie() are OrderKeep() and OrderTie() of ActiveOrder(clock). Adaptive
  /// picks lru or lfu after PrepareFromStats (RanksByPopulation: its second
  /// order is the access count, from which the index keeps the population's
  /// statistics); sglang breaks ties one way or the other by the step's
  /// tokens.
  virtual size_t NumOrders() const { return 1; }
  virtual double OrderKeep(size_t /*order*/, const EntryView& entry,
                           const CacheClock& clock) const {
    return Keep(entry, clock);
  }
  virtual uint64_t OrderTie(size_t /*order*/, const EntryView& entry) const { return Tie(entry); }
  virtual size_t ActiveOrder(const CacheClock& /*clock*/) const { return 0; }

  /// What breaks a tie of Keep(): the lower value goes first.
  virtual uint64_t Tie(const EntryView& entry) const { return entry.last_access; }
  virtual StepOrder step_order() const { return StepOrder::kAsRouted; }
  /// Whether the policy reads EntryView::crf (llama.cpp's CRF): the caches
  /// keep it up to date only for such a policy, saving an exp2 per use.
  virtual bool ReadsCrf() const { return false; }
};

/// Puts a step's experts in the order `order` touches them; `resident`
/// says which the cache holds at the start of the step. The orders but
/// kAsRouted keep each expert once (at its first appearance): a batch's
/// distinct experts count once each.
void ArrangeStep(StepOrder order, std::vector<uint32_t>& experts,
                 absl::FunctionRef<bool(uint32_t)> resident);

/// The decay of the layer-aware reuse EMA per visit of the layer. Fast, so
/// that the EMA says mostly whether the latest visits used the expert; the
/// long run is layer_reuse's frequency term (README, "Eviction policies").
inline constexpr double kReuseRate = 0.9;

/// The reuse EMA recorded at visit `from`, decayed to visit `to`: the visits
/// in between had no use.
double DecayReuse(double reuse, uint64_t from, uint64_t to);
/// Current reuse estimate of an entry, as of its layer's latest visit.
double CurrentReuse(const EntryView& entry, const CacheClock& clock);
/// The reuse EMA after a use at visit `visit` of the entry's layer, the
/// previous use being at `last_visit`: idle visits decay it, this use adds.
double ReuseAfterUse(double reuse, uint64_t last_visit, uint64_t visit);
/// The half-life of llama.cpp's CRF, in visits of the entry's layer (its
/// 128 tokens, one token per visit in one-token decode).
inline constexpr double kCrfHalfLifeVisits = 128;
/// The CRF after a use at visit `visit`, the previous use at `last_visit`.
double CrfAfterUse(double crf, uint64_t last_visit, uint64_t visit);
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

struct EvictionPolicyOptions {
  /// For "affinity": the expert's affinity score, and a number that moves
  /// whenever the scores of a layer may have changed (absent: they never do).
  std::function<double(ExpertKey)> affinity;
  std::function<uint64_t(uint32_t layer)> affinity_version;
  /// For "adaptive": LFU when max/mean access count of the evictable entries
  /// is at least this, else LRU.
  double adaptive_skew = 2.0;
};

/// The online policies, the names MakeEvictionPolicy accepts, for help
/// texts: ours, then the peers' (core/cache/peer_policies.h). (The offline
/// optimum lives in eval/belady_policy.h.)
std::vector<std::string> EvictionPolicyNames();

/// INVALID_ARGUMENT naming the policies there are, unless `name` is one.
absl::Status CheckEvictionPolicyName(absl::string_view name);

/// lru | lfu | affinity | adaptive | layer_reuse, or a peer's. An unknown name, or a
/// policy missing the function it needs, is INVALID_ARGUMENT.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(
    absl::string_view name, const EvictionPolicyOptions& options);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_EVICTION_POLICY_H_
