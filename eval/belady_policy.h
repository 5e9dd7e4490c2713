#ifndef MOE_ROUTER_EVAL_BELADY_POLICY_H_
#define MOE_ROUTER_EVAL_BELADY_POLICY_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "core/cache/eviction_policy.h"

namespace moe_router {

inline constexpr char kBeladyPolicyName[] = "belady";

/// The clairvoyant optimum for replay: evicts the entry whose next access
/// (`next_use(key, now)`, the cache tick of it, UINT64_MAX for never) is
/// furthest away. Only an offline replay knows the future, so the engine's
/// policy factory does not offer it.
std::unique_ptr<EvictionPolicy> MakeBeladyPolicy(
    std::function<uint64_t(ExpertKey, uint64_t now)> next_use);

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_BELADY_POLICY_H_
