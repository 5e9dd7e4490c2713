#ifndef MOE_ROUTER_TESTS_TESTING_CACHE_STEPS_H_
#define MOE_ROUTER_TESTS_TESTING_CACHE_STEPS_H_

#include <cstdint>
#include <vector>

#include "core/cache/expert_cache.h"

namespace moe_router::testing {

/// One step served as the replay serves it: the step's experts arranged in
/// the order the cache's policy touches them, pinned, each accessed in turn,
/// then the misses loaded (`bytes`) in that order; the hits. A step of one
/// token unless `tokens` says.
uint64_t ServeStep(ExpertCache& cache, uint32_t layer, std::vector<uint32_t> experts,
                   uint64_t bytes, uint32_t tokens = 1);

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_CACHE_STEPS_H_
