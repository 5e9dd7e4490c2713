#include "core/cache/peer_policies.h"

#include <algorithm>
#include <cmath>
#include <iterator>

namespace moe_router {
namespace {

// A policy whose keys move with each layer's own clock (a per-layer count
// of the cache's): an entry is keyed by its age on its layer's clock, and
// a layer is re-keyed when that clock moved, so a decision costs
// O(residents of the layers stepped since the previous one).
class LayerClockedPolicy : public EvictionPolicy {
 public:
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return LayerKey(e, clock);
  }
  KeyScope key_scope() const override { return KeyScope::kLayer; }
  double LayerKey(const EntryView& e, const CacheClock& clock) const override {
    const uint64_t now = Clock(clock, e.key.layer);
    const uint64_t last = LastTick(e);
    return KeyAtAge(e, now >= last ? now - last : 0);
  }
  void LayerStamps(const CacheClock& clock, absl::Span<uint64_t> out) const override {
    for (size_t l = 0; l < out.size(); ++l) out[l] = Clock(clock, static_cast<uint32_t>(l));
  }

 private:
  virtual const std::vector<uint64_t>& Clocks(const CacheClock& clock) const = 0;
  virtual uint64_t LastTick(const EntryView& e) const = 0;  // on its layer's clock
  virtual double KeyAtAge(const EntryView& e, uint64_t age) const = 0;
  uint64_t Clock(const CacheClock& clock, uint32_t layer) const {
    const std::vector<uint64_t>& clocks = Clocks(clock);
    return layer < clocks.size() ? clocks[layer] : 0;
  }
};

// llama.cpp's --moe-cache-mib before release b12170 (src/llama-moe-cache.cpp
// at commit 4b060f27a806dab2072a66007607f0e98b6b9b40): one LRU over the
// (layer, expert) slots of all cached layers. Per layer of a micro-batch,
// the batch's distinct experts count once each; hits become most recent in
// order of first appearance, then misses, sorted by expert id, each take the
// least recently used slot; every miss is admitted; no prefetch.
// Mapped: its slots are our byte budget (experts of one size make them
// equal; replay keeps its extra padding slot, PeerPaddingSlots); a step's
// experts are touched hits first, then misses by id (step_order), so their
// recency is llama.cpp's. Not modelled: batches above 32 tokens, which it
// serves around the cache (replays step one token at a time); the split of
// the budget between devices and between groups of layers of different
// tensor layouts (one group here).
class LlamaCppLruPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "llama_cpp_lru"; }
  double Keep(const EntryView& e, const CacheClock&) const override {
    return static_cast<double>(e.last_access);
  }
  StepOrder step_order() const override { return StepOrder::kHitsThenMissesById; }
};

// llama.cpp's --moe-cache-mib since release b12170 (pull request #31233,
// "ClassLRU"; src/llama-moe-cache.cpp at commit
// c4fb579695320929b6a453f4f3a56951bda332ee, read from its header comment
// and the release's commit list): a CRF per (layer, expert) counts its uses,
// decayed with a half-life of 128 tokens of its layer's clock and kept
// across evictions; its class is floor(log2(CRF)) as of its last use, at
// most 7 (n_class 8); each class keeps an LRU list; the victim is an empty
// slot, else among each class list's least recently used slot outside the
// current plan (pinned here) the one with the largest age / 2^class, age in
// tokens since its last use. Order within a step, padding slot and budget
// as llama_cpp_lru.
// Mapped: the layer clock is its visits (one per token in one-token decode;
// it advances by the micro-batch's tokens upstream), and a use adds 1 per
// visit. Since a list's least recently used slot has the largest age of its
// class, the victim is the entry with the largest age / 2^class overall:
// Keep() is minus that, on its layer's clock.
// Not modelled: batches above 32 tokens (as llama_cpp_lru); how ties
// between class lists break (here: the least recently touched).
class LlamaCppClassLruPolicy final : public LayerClockedPolicy {
 public:
  std::string name() const override { return "llama_cpp"; }
  StepOrder step_order() const override { return StepOrder::kHitsThenMissesById; }
  bool ReadsCrf() const override { return true; }

 private:
  static constexpr int kClasses = 8;
  static int Class(double crf) {
    if (!(crf >= 1)) return 0;
    return std::min(kClasses - 1, static_cast<int>(std::floor(std::log2(crf))));
  }
  const std::vector<uint64_t>& Clocks(const CacheClock& clock) const override {
    return clock.layer_visits;
  }
  uint64_t LastTick(const EntryView& e) const override { return e.reuse_visit; }
  double KeyAtAge(const EntryView& e, uint64_t age) const override {
    return -std::ldexp(static_cast<double>(age), -Class(e.crf));
  }
};

// SGLang's expert_pack cache, as the issues that asked for it read upstream
// (no copy of its source was reachable here): one pool over all layers; a
// count per (layer, expert), +1 per call that requests it, saturating at
// 255, never decayed, kept across evictions; the victim is an empty slot,
// else the lowest count not requested in this call (here: not pinned by the
// step), ties to the least recently used for a one-token call and to the
// most recently used for larger ones.
// Mapped: the count is our access count, a step's distinct experts touched
// once each (step_order), so per call in batched steps too; a call is a
// step, its tokens CacheClock::StepTokens(), and the two tie-breaks are two
// orders of the same counts.
class SglangPolicy final : public EvictionPolicy {
 public:
  std::string name() const override { return "sglang"; }
  StepOrder step_order() const override { return StepOrder::kDistinctAsRouted; }
  double Keep(const EntryView& e, const CacheClock&) const override {
    return static_cast<double>(std::min<uint64_t>(e.accesses, kSaturation));
  }
  size_t NumOrders() const override { return 2; }
  uint64_t OrderTie(size_t order, const EntryView& e) const override {
    return order == kMostRecentFirst ? ~e.last_access : e.last_access;
  }
  size_t ActiveOrder(const CacheClock& clock) const override {
    return clock.StepTokens() > 1 ? kMostRecentFirst : 0;
  }

 private:
  static constexpr uint64_t kSaturation = 255;
  static constexpr size_t kMostRecentFirst = 1;
};

// vLLM pull request #37190 (--moe-expert-cache-size): one cache per layer
// with its own clock, +1 per access; a hit sets freq += 1 and last = clock;
// a miss takes a free slot, else evicts the lowest freq / (clock - last + 1)
// (ties to the earliest inserted), then enters with freq 1; counts reset on
// eviction.
// Mapped: exactly with a cache per layer (replay's per-layer budget); under a
// budget shared by all layers, one pool in which each entry is scored under
// its own layer's clock (the layer's accesses).
class VllmLfruPolicy final : public LayerClockedPolicy {
 public:
  std::string name() const override { return "vllm_lfru"; }
  uint64_t Tie(const EntryView& e) const override { return e.admitted; }

 private:
  const std::vector<uint64_t>& Clocks(const CacheClock& clock) const override {
    return clock.layer_accesses;
  }
  uint64_t LastTick(const EntryView& e) const override { return e.layer_access; }
  double KeyAtAge(const EntryView& e, uint64_t age) const override {
    return static_cast<double>(e.resident_accesses) / static_cast<double>(age + 1);
  }
};

// Least-Stale (SpecMD, arXiv 2602.03921) as tinyserve's port reads it; no
// official code was found, and without SpecMD's prefetcher it decides as
// LRU, so it is no evidence for or against another policy. Fresh
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

constexpr absl::string_view kPeerNames[] = {"llama_cpp", "llama_cpp_lru", "sglang", "vllm_lfru",
                                            "least_stale"};

std::vector<std::string> PeerPolicyNames() {
  return std::vector<std::string>(std::begin(kPeerNames), std::end(kPeerNames));
}

bool IsPeerPolicy(absl::string_view name) {
  return std::find(std::begin(kPeerNames), std::end(kPeerNames), name) != std::end(kPeerNames);
}

std::unique_ptr<EvictionPolicy> MakePeerPolicy(absl::string_view name) {
  if (name == "llama_cpp") return std::make_unique<LlamaCppClassLruPolicy>();
  if (name == "llama_cpp_lru") return std::make_unique<LlamaCppLruPolicy>();
  if (name == "sglang") return std::make_unique<SglangPolicy>();
  if (name == "vllm_lfru") return std::make_unique<VllmLfruPolicy>();
  if (name == "least_stale") return std::make_unique<LeastStalePolicy>();
  return nullptr;
}

namespace {
bool IsLlamaCpp(absl::string_view name) { return name == "llama_cpp" || name == "llama_cpp_lru"; }
}  // namespace

uint64_t PeerPaddingSlots(absl::string_view name) { return IsLlamaCpp(name) ? 1 : 0; }

uint32_t PeerBypassTokens(absl::string_view name) { return IsLlamaCpp(name) ? 32 : 0; }

}  // namespace moe_router
