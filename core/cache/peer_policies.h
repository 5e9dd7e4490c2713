#ifndef MOE_ROUTER_CORE_CACHE_PEER_POLICIES_H_
#define MOE_ROUTER_CORE_CACHE_PEER_POLICIES_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/cache/eviction_policy.h"

namespace moe_router {

/// The expert caches of the engines users already run, rebuilt from their
/// documented behaviour so that a replay can set ours beside them:
///   llama_cpp      llama.cpp's --moe-cache-mib (ClassLRU, release b12170 on)
///   llama_cpp_lru  the same before b12170 (one LRU)
///   sglang         SGLang's expert_pack cache
///   vllm_lfru      vLLM pull request #37190 (--moe-expert-cache-size)
///   least_stale    Least-Stale (SpecMD, arXiv 2602.03921) as tinyserve
///                  reads it (no official code was found)
/// Each policy's comment says how its rules map onto this cache (one byte
/// budget over all layers, steps of one layer). Peers neither prefetch nor
/// route with a cache bonus.
std::vector<std::string> PeerPolicyNames();
bool IsPeerPolicy(absl::string_view name);

/// The peer named `name`; null if it is not one.
std::unique_ptr<EvictionPolicy> MakePeerPolicy(absl::string_view name);

/// Slots of the budget the peer allocates but never fills: llama.cpp
/// allocates one past its last (CUDA MMQ may read past the last expert).
uint64_t PeerPaddingSlots(absl::string_view name);

/// Steps of more tokens than this the peer serves around its cache (0:
/// none): llama.cpp's micro-batches above 32 tokens.
uint32_t PeerBypassTokens(absl::string_view name);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_PEER_POLICIES_H_
