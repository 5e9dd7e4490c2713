#include "core/cache/eviction_policy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/cache/peer_policies.h"

namespace moe_router {

double DecayReuse(double reuse, uint64_t from, uint64_t to) {
  // Rankings decay every entry: the powers of short gaps come from a table
  // of the very values std::pow gives, so results are bit-identical.
  static const auto* const powers = [] {
    auto* table = new std::array<double, 256>();
    for (size_t n = 0; n < table->size(); ++n) {
      (*table)[n] = std::pow(1.0 - kReuseRate, static_cast<double>(n));
    }
    return table;
  }();
  if (to <= from) return reuse;
  const uint64_t gap = to - from;
  return reuse * (gap < powers->size() ? (*powers)[gap]
                                       : std::pow(1.0 - kReuseRate, static_cast<double>(gap)));
}

double CurrentReuse(const EntryView& entry, const CacheClock& clock) {
  if (entry.key.layer >= clock.layer_visits.size()) return entry.reuse;
  return DecayReuse(entry.reuse, entry.reuse_visit, clock.layer_visits[entry.key.layer]);
}

double ReuseAfterUse(double reuse, uint64_t last_visit, uint64_t visit) {
  return DecayReuse(reuse, last_visit, visit) * (1 - kReuseRate) + kReuseRate;
}

double CrfAfterUse(double crf, uint64_t last_visit, uint64_t visit) {
  const double idle = visit > last_visit ? static_cast<double>(visit - last_visit) : 0.0;
  return crf * std::exp2(-idle / kCrfHalfLifeVisits) + 1;
}

EntryView AsIfUsedNow(EntryView entry, const CacheClock& clock) {
  entry.reuse = CurrentReuse(entry, clock) * (1 - kReuseRate) + kReuseRate;
  if (entry.key.layer < clock.layer_visits.size()) {
    entry.crf = CrfAfterUse(entry.crf, entry.reuse_visit, clock.layer_visits[entry.key.layer]);
    entry.reuse_visit = clock.layer_visits[entry.key.layer];
  }
  if (entry.key.layer < clock.layer_accesses.size()) {
    entry.layer_access = clock.layer_accesses[entry.key.layer] + 1;
  }
  entry.last_access = clock.now + 1;
  entry.accesses += 1;
  entry.resident_accesses += 1;
  return entry;
}

void ArrangeStep(StepOrder order, std::vector<uint32_t>& experts,
                 absl::FunctionRef<bool(uint32_t)> resident) {
  if (order == StepOrder::kAsRouted) return;
  // Distinct experts at their first appearance: sorted by (expert, place),
  // the first of each kept, back in place order. Steps are small (tokens x
  // top_k), and the scratch is reused.
  thread_local std::vector<std::pair<uint32_t, uint32_t>> firsts;
  firsts.clear();
  for (uint32_t i = 0; i < experts.size(); ++i) firsts.push_back({experts[i], i});
  std::sort(firsts.begin(), firsts.end());
  firsts.erase(std::unique(firsts.begin(), firsts.end(),
                           [](const auto& a, const auto& b) { return a.first == b.first; }),
               firsts.end());
  std::sort(firsts.begin(), firsts.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  experts.clear();
  for (const auto& [expert, place] : firsts) experts.push_back(expert);
  if (order == StepOrder::kDistinctAsRouted) return;
  const auto misses = std::stable_partition(experts.begin(), experts.end(), resident);
  std::sort(misses, experts.end());
}

void EvictionPolicy::Prepare(absl::Span<const EntryView> candidates) {
  if (!RanksByPopulation()) return;
  PopulationStats stats;
  stats.count = candidates.size();
  for (const EntryView& e : candidates) {
    stats.max_accesses = std::max(stats.max_accesses, e.accesses);
    stats.sum_accesses += e.accesses;
  }
  PrepareFromStats(stats);
}

namespace {

class LruPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "lru"; }
  double Keep(const EntryView& e, const CacheClock&) const override {
    return static_cast<double>(e.last_access);
  }
};

class LfuPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "lfu"; }
  double Keep(const EntryView& e, const CacheClock&) const override {
    return static_cast<double>(e.accesses);
  }
};

// A layer's scores move together as it routes: the index re-keys a layer
// when its version moves.
class AffinityPolicy final : public EvictionPolicy {
 public:
  AffinityPolicy(std::function<double(ExpertKey)> affinity,
                 std::function<uint64_t(uint32_t)> version)
      : affinity_(std::move(affinity)), version_(std::move(version)) {}
  std::string name() const override { return "affinity"; }
  double Keep(const EntryView& e, const CacheClock&) const override { return affinity_(e.key); }
  KeyScope key_scope() const override { return KeyScope::kLayer; }
  void LayerStamps(const CacheClock&, absl::Span<uint64_t> out) const override {
    for (size_t l = 0; l < out.size(); ++l) out[l] = version_ ? version_(l) : 0;
  }

 private:
  std::function<double(ExpertKey)> affinity_;
  std::function<uint64_t(uint32_t)> version_;
};

// LFU while the access counts of the evictable entries are skewed (a few
// experts dominate, so frequency predicts reuse); LRU while they are flat.
class AdaptivePolicy final : public EvictionPolicy {
 public:
  explicit AdaptivePolicy(double skew) : skew_(skew) {}
  std::string name() const override { return "adaptive"; }
  void PrepareFromStats(const PopulationStats& stats) override {
    use_lfu_ = stats.count != 0 && stats.sum_accesses > 0 &&
               static_cast<double>(stats.max_accesses) * stats.count >= skew_ * stats.sum_accesses;
  }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return OrderKeep(ActiveOrder(clock), e, clock);
  }
  bool RanksByPopulation() const override { return true; }
  size_t NumOrders() const override { return 2; }
  double OrderKeep(size_t order, const EntryView& e, const CacheClock& clock) const override {
    return order == 1 ? lfu_.Keep(e, clock) : lru_.Keep(e, clock);
  }
  size_t ActiveOrder(const CacheClock&) const override { return use_lfu_ ? 1 : 0; }

 private:
  const double skew_;
  bool use_lfu_ = false;
  LruPolicy lru_;
  LfuPolicy lfu_;
};

// Layer-aware expected reuse distance. Layers are visited cyclically, so an
// entry of the layer about to be served is needed soonest and one of the
// layer just served is needed last: global LRU gets this exactly backwards.
// With p the chance the expert is used at a visit of its layer (a recency
// EMA blended with its long-run uses per visit, which batched steps can
// take above 1), the expected number of steps to
// its next use is d + L (1/p - 1), d being the distance to its layer's next
// visit. The entry expected to be needed last goes first, as Belady would.
// d is certain and p an estimate, so d counts twice; that weight and the
// blend (its own for a layer visited by a batch) were chosen on held-out
// traces (README, "Eviction policies").
class LayerReusePolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "layer_reuse"; }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return CombineLayerKey(e.key.layer, LayerKey(e, clock), clock);
  }
  // A layer's entries are ordered by their expected visits to the next use,
  // which moves only when the layer is visited (or the entry used); the
  // distance to the layer's next visit is common to the layer and moves
  // every step.
  KeyScope key_scope() const override { return KeyScope::kLayer; }
  double LayerKey(const EntryView& e, const CacheClock& clock) const override {
    const uint32_t layers = std::max<uint32_t>(clock.num_layers, 1);
    const uint64_t visits =
        e.key.layer < clock.layer_visits.size() ? clock.layer_visits[e.key.layer] : 0;
    // Uses per visit: at most 1 one token a step; a batch's step may use an
    // expert several times, and the count keeps ranking the experts that
    // every step uses (capped at 1 they would all tie).
    const double frequency = visits == 0 ? 0.0 : static_cast<double>(e.accesses) / visits;
    // A batch's visit uses many of the layer's experts, so having been used
    // lately says less of the next visit than one token's use does. (The
    // tokens move only at a visit, which re-keys the layer anyway.)
    const double recency =
        clock.LayerTokens(e.key.layer) > 1 ? kBatchRecencyWeight : kRecencyWeight;
    const double p = std::max(recency * CurrentReuse(e, clock) + (1 - recency) * frequency, 1e-6);
    // Negated (exactly) so that a lower key goes first.
    return -(layers * (1.0 / p - 1.0));
  }
  double CombineLayerKey(uint32_t layer, double key, const CacheClock& clock) const override {
    const uint32_t layers = std::max<uint32_t>(clock.num_layers, 1);
    const uint32_t distance = (layer + layers - clock.current_layer - 1) % layers + 1;
    return -(kDistanceWeight * distance + -key);
  }
  bool CombinesByIdentity() const override { return false; }
  void LayerStamps(const CacheClock& clock, absl::Span<uint64_t> out) const override {
    for (size_t l = 0; l < out.size(); ++l) {
      out[l] = l < clock.layer_visits.size() ? clock.layer_visits[l] : 0;
    }
  }
  uint64_t CombineStamp(const CacheClock& clock) const override {
    return (uint64_t{clock.num_layers} << 32) | clock.current_layer;
  }

 private:
  static constexpr double kRecencyWeight = 0.2;
  static constexpr double kBatchRecencyWeight = 0.1;
  static constexpr double kDistanceWeight = 2.0;
};

absl::Status UnknownPolicyError(absl::string_view name) {
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown eviction policy '%s' (expected one of: %s)", name,
                      absl::StrJoin(EvictionPolicyNames(), ", ")));
}

}  // namespace

std::vector<std::string> EvictionPolicyNames() {
  std::vector<std::string> names = {"lru", "lfu", "affinity", "adaptive", "layer_reuse"};
  for (std::string& peer : PeerPolicyNames()) names.push_back(std::move(peer));
  return names;
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(
    absl::string_view name, const EvictionPolicyOptions& options) {
  if (name == "lru") return std::make_unique<LruPolicy>();
  if (name == "lfu") return std::make_unique<LfuPolicy>();
  if (name == "adaptive") return std::make_unique<AdaptivePolicy>(options.adaptive_skew);
  if (name == "layer_reuse") return std::make_unique<LayerReusePolicy>();
  if (std::unique_ptr<EvictionPolicy> peer = MakePeerPolicy(name)) return peer;
  if (name == "affinity") {
    if (!options.affinity) {
      return absl::InvalidArgumentError("eviction policy 'affinity' needs affinity scores");
    }
    return std::make_unique<AffinityPolicy>(options.affinity, options.affinity_version);
  }
  return UnknownPolicyError(name);
}

absl::Status CheckEvictionPolicyName(absl::string_view name) {
  for (const std::string& known : EvictionPolicyNames()) {
    if (name == known) return absl::OkStatus();
  }
  return UnknownPolicyError(name);
}

}  // namespace moe_router
