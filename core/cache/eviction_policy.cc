#include "core/cache/eviction_policy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <tuple>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

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

EntryView AsIfUsedNow(EntryView entry, const CacheClock& clock) {
  entry.reuse = CurrentReuse(entry, clock) * (1 - kReuseRate) + kReuseRate;
  if (entry.key.layer < clock.layer_visits.size()) {
    entry.reuse_visit = clock.layer_visits[entry.key.layer];
  }
  entry.last_access = clock.now + 1;
  entry.accesses += 1;
  return entry;
}

void EvictionQueue::Rank(EvictionPolicy& policy, absl::Span<const EntryView> candidates,
                         absl::Span<const uint64_t> bytes, const CacheClock& clock) {
  policy.Prepare(candidates, clock);
  keeps_.resize(candidates.size());
  policy.KeepEach(candidates, clock, absl::MakeSpan(keeps_));
  heap_.clear();
  heap_.reserve(candidates.size());
  bytes_ = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const EntryView& v = candidates[i];
    heap_.push_back({keeps_[i], v.last_access, v.key, bytes[i]});
    bytes_ += bytes[i];
  }
  std::make_heap(heap_.begin(), heap_.end(), After());
}

void EvictionQueue::Take(uint64_t need, std::optional<double> incoming_keep, EvictionPlan* out) {
  EvictionPlan& plan = *out;
  plan.victims.clear();
  plan.freed = 0;
  plan.valued_more.reset();
  if (bytes_ < need) {
    plan.freed = bytes_;
    return;
  }
  auto end = heap_.end();
  while (plan.freed < need) {
    std::pop_heap(heap_.begin(), end, After());
    --end;
    if (incoming_keep && end->keep >= *incoming_keep) {
      // Dropped: put back what was taken.
      plan.valued_more = end->key;
      for (; end != heap_.end(); ++end) std::push_heap(heap_.begin(), end + 1, After());
      plan.victims.clear();
      plan.freed = 0;
      return;
    }
    plan.freed += end->bytes;
    plan.victims.push_back(end->key);
  }
  bytes_ -= plan.freed;
  heap_.erase(end, heap_.end());
}

EvictionPlan PlanEviction(EvictionPolicy& policy, absl::Span<const EntryView> candidates,
                          absl::Span<const uint64_t> bytes, const CacheClock& clock, uint64_t need,
                          const EntryView* incoming) {
  EvictionQueue queue;
  queue.Rank(policy, candidates, bytes, clock);
  EvictionPlan plan;
  queue.Take(need,
             incoming != nullptr ? std::optional(policy.Keep(*incoming, clock)) : std::nullopt,
             &plan);
  return plan;
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

class AffinityPolicy final : public EvictionPolicy {
 public:
  explicit AffinityPolicy(std::function<double(ExpertKey)> affinity)
      : affinity_(std::move(affinity)) {}
  std::string name() const override { return "affinity"; }
  double Keep(const EntryView& e, const CacheClock&) const override { return affinity_(e.key); }

 private:
  std::function<double(ExpertKey)> affinity_;
};

// LFU while the access counts of the evictable entries are skewed (a few
// experts dominate, so frequency predicts reuse); LRU while they are flat.
class AdaptivePolicy final : public EvictionPolicy {
 public:
  explicit AdaptivePolicy(double skew) : skew_(skew) {}
  std::string name() const override { return "adaptive"; }
  void Prepare(absl::Span<const EntryView> candidates, const CacheClock&) override {
    uint64_t max = 0, sum = 0;
    for (const EntryView& e : candidates) {
      max = std::max(max, e.accesses);
      sum += e.accesses;
    }
    use_lfu_ = !candidates.empty() && sum > 0 &&
               static_cast<double>(max) * candidates.size() >= skew_ * sum;
  }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return use_lfu_ ? lfu_.Keep(e, clock) : lru_.Keep(e, clock);
  }
  bool using_lfu() const { return use_lfu_; }
  bool RanksByPopulation() const override { return true; }

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
// EMA blended with its long-run frequency), the expected number of steps to
// its next use is d + L (1/p - 1), d being the distance to its layer's next
// visit. The entry expected to be needed last goes first, as Belady would.
class LayerReusePolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "layer_reuse"; }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    const uint32_t layers = std::max<uint32_t>(clock.num_layers, 1);
    const uint32_t distance = (e.key.layer + layers - clock.current_layer - 1) % layers + 1;
    const uint64_t visits =
        e.key.layer < clock.layer_visits.size() ? clock.layer_visits[e.key.layer] : 0;
    const double frequency =
        visits == 0 ? 0.0 : std::min(1.0, static_cast<double>(e.accesses) / visits);
    const double p =
        std::max(kRecencyWeight * CurrentReuse(e, clock) + (1 - kRecencyWeight) * frequency, 1e-6);
    return -(distance + layers * (1.0 / p - 1.0));
  }
  // The default policy ranks every call of a worker cache: its Keep() inlined.
  void KeepEach(absl::Span<const EntryView> entries, const CacheClock& clock,
                absl::Span<double> out) const override {
    for (size_t i = 0; i < entries.size(); ++i) out[i] = LayerReusePolicy::Keep(entries[i], clock);
  }

 private:
  static constexpr double kRecencyWeight = 0.5;
};

absl::Status UnknownPolicyError(absl::string_view name) {
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown eviction policy '%s' (expected one of: %s)", name,
                      absl::StrJoin(EvictionPolicyNames(), ", ")));
}

}  // namespace

std::vector<std::string> EvictionPolicyNames() {
  return {"lru", "lfu", "affinity", "adaptive", "layer_reuse"};
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(
    absl::string_view name, const EvictionPolicyOptions& options) {
  if (name == "lru") return std::make_unique<LruPolicy>();
  if (name == "lfu") return std::make_unique<LfuPolicy>();
  if (name == "adaptive") return std::make_unique<AdaptivePolicy>(options.adaptive_skew);
  if (name == "layer_reuse") return std::make_unique<LayerReusePolicy>();
  if (name == "affinity") {
    if (!options.affinity) {
      return absl::InvalidArgumentError("eviction policy 'affinity' needs affinity scores");
    }
    return std::make_unique<AffinityPolicy>(options.affinity);
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
