#include "core/model/page_routed_batch.h"

namespace moe_router {

void PageRoutedBatch(WorkerCacheView& view, uint32_t layer, const RouteResult& batch,
                     absl::Span<const uint32_t> next_layer,
                     absl::FunctionRef<uint8_t(ExpertKey)> variant_for, CacheInstructions* out) {
  view.NoteRoutedTokens(batch.tokens);
  // As the offline replay does: the batch's experts are pinned, each use is
  // recorded in order and a miss is loaded at its first use.
  for (const WorkerCacheView::Miss& miss : view.BeginStep(layer, batch.tokens, batch.experts)) {
    const ExpertKey key{layer, miss.expert};
    view.NoteMiss(miss, view.TryAdmit(key, variant_for(key), Priority::kUrgent) ==
                            WorkerCacheView::Admission::kAdmitted);
  }
  const auto prefetch = [&](ExpertKey key) {
    view.TryAdmit(key, variant_for(key), Priority::kPrefetch);
  };
  for (uint32_t e : batch.prefetch) prefetch({layer, e});
  for (uint32_t e : next_layer) prefetch({layer + 1, e});
  view.EndCall(out);
}

}  // namespace moe_router
