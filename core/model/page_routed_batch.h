#ifndef MOE_ROUTER_CORE_MODEL_PAGE_ROUTED_BATCH_H_
#define MOE_ROUTER_CORE_MODEL_PAGE_ROUTED_BATCH_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/types/span.h"
#include "core/base/types.h"
#include "core/cache/worker_cache_view.h"
#include "core/routing/router.h"

namespace moe_router {

/// Pages one routed batch of `layer` against a worker's view, the one way
/// the service and the in-process engine both do it: each miss loaded at its
/// first use (the batch's experts pinned), then the batch's runners-up and
/// `next_layer` (experts predicted for layer + 1) prefetched, each evicting
/// only what the policy values less. Ends the call into `out`.
void PageRoutedBatch(WorkerCacheView& view, uint32_t layer, const RouteResult& batch,
                     absl::Span<const uint32_t> next_layer,
                     absl::FunctionRef<uint8_t(ExpertKey)> variant_for, CacheInstructions* out)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(view.mu());

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_MODEL_PAGE_ROUTED_BATCH_H_
