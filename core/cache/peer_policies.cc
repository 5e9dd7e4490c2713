#include "core/cache/peer_policies.h"

#include <algorithm>
#include <iterator>

namespace moe_router {
namespace {

// llama.cpp's --moe-cache-mib (src/llama-moe-cache.cpp): one LRU over the
// (layer, expert) slots of all cached layers. Per layer of a micro-batch,
// the batch's distinct experts count once each; hits become most recent in
// order of first appearance, then misses, sorted by expert id, each take the
// least recently used slot; every miss is admitted; no prefetch.
// Mapped: its slots are our byte budget (experts of one size make them
// equal); a step's experts are touched hits first, then misses by id
// (step_order), so their recency is llama.cpp's. Batches above 32 tokens,
// which it serves around the cache, are not modelled: replays step one
// token at a time.
class LlamaCppPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "llama_cpp"; }
  double Keep(const EntryView& e, const CacheClock&) const override {
    return static_cast<double>(e.last_access);
  }
  StepOrder step_order() const override { return StepOrder::kHitsThenMissesById; }
};

// SGLang's expert_pack cache: one pool over all layers; a count per (layer,
// expert), +1 per call that requests it, saturating at 255, never decayed,
// kept across evictions; the victim is an empty slot, else the lowest count
// not requested in this call (here: not pinned by the step), ties to the
// least recently used for a one-token call and to the most recently used
// for larger ones.
// Mapped: the count is our access count, which is per call when a step is
// one token (replays) and per token use in batched steps; ties always go to
// the least recently used, as for SGLang's one-token calls.
class SglangPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "sglang"; }
  double Keep(const EntryView& e, const CacheClock&) const override {
    return static_cast<double>(std::min<uint64_t>(e.accesses, kSaturation));
  }

 private:
  static constexpr uint64_t kSaturation = 255;
};

// vLLM pull request #37190 (--moe-expert-cache-size): one cache per layer
// with its own clock, +1 per access; a hit sets freq += 1 and last = clock;
// a miss takes a free slot, else evicts the lowest freq / (clock - last + 1)
// (ties to the earliest inserted), then enters with freq 1; counts reset on
// eviction.
// Mapped: exactly with a cache per layer (replay's per-layer budget); under a
// budget shared by all layers, one pool in which each entry is scored under
// its own layer's clock. The score moves with the clock, so it cannot stay
// in an index: a layer is re-keyed when its clock moved, and a decision
// costs O(residents of the layers accessed since the previous one), one
// layer's between consecutive steps.
class VllmLfruPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "vllm_lfru"; }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return LayerKey(e, clock);
  }
  KeyScope key_scope() const override { return KeyScope::kLayer; }
  double LayerKey(const EntryView& e, const CacheClock& clock) const override {
    const uint64_t now =
        e.key.layer < clock.layer_accesses.size() ? clock.layer_accesses[e.key.layer] : 0;
    const uint64_t age = now >= e.layer_access ? now - e.layer_access : 0;
    return static_cast<double>(e.resident_accesses) / static_cast<double>(age + 1);
  }
  void LayerStamps(const CacheClock& clock, absl::Span<uint64_t> out) const override {
    for (size_t l = 0; l < out.size(); ++l) {
      out[l] = l < clock.layer_accesses.size() ? clock.layer_accesses[l] : 0;
    }
  }
  uint64_t Tie(const EntryView& e) const override { return e.admitted; }
};

// Least-Stale (SpecMD, arXiv 2602.03921), as commonly implemented: fresh
// and stale lists; at each token's forward pass the fresh entries become
// stale; a hit on a stale entry makes it fresh; a miss enters fresh; evict
// the oldest stale, else the oldest fresh.
// Mapped: fresh means touched since the current pass began
// (CacheClock::pass_start), oldest means least recently touched. In
// one-token decode an expert is touched at most once per pass, so that is
// also the order entries joined their list; and since every fresh entry was
// touched after every stale one, its decisions there are LRU's.
class LeastStalePolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "least_stale"; }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return CombineLayerKey(e.key.layer, LayerKey(e, clock), clock);
  }
  // The flip moves every entry at once, at a pass: the layer key is the last
  // touch, and the combination lifts the fresh ones above every stale one.
  // It is exact and strictly increasing (ticks stay below 2^52), so no two
  // keys combine into one and the index never walks a layer to tell them
  // apart.
  KeyScope key_scope() const override { return KeyScope::kLayer; }
  double LayerKey(const EntryView& e, const CacheClock&) const override {
    return static_cast<double>(e.last_access);
  }
  double CombineLayerKey(uint32_t, double key, const CacheClock& clock) const override {
    return key > static_cast<double>(clock.pass_start) ? key + kFresh : key;
  }
  bool CombinesByIdentity() const override { return false; }
  uint64_t CombineStamp(const CacheClock& clock) const override { return clock.pass_start; }

 private:
  static constexpr double kFresh = 4503599627370496.0;  // 2^52
};

}  // namespace

constexpr absl::string_view kPeerNames[] = {"llama_cpp", "sglang", "vllm_lfru", "least_stale"};

std::vector<std::string> PeerPolicyNames() {
  return std::vector<std::string>(std::begin(kPeerNames), std::end(kPeerNames));
}

bool IsPeerPolicy(absl::string_view name) {
  return std::find(std::begin(kPeerNames), std::end(kPeerNames), name) != std::end(kPeerNames);
}

std::unique_ptr<EvictionPolicy> MakePeerPolicy(absl::string_view name) {
  if (name == "llama_cpp") return std::make_unique<LlamaCppPolicy>();
  if (name == "sglang") return std::make_unique<SglangPolicy>();
  if (name == "vllm_lfru") return std::make_unique<VllmLfruPolicy>();
  if (name == "least_stale") return std::make_unique<LeastStalePolicy>();
  return nullptr;
}

}  // namespace moe_router
