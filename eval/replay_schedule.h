#ifndef MOE_ROUTER_EVAL_REPLAY_SCHEDULE_H_
#define MOE_ROUTER_EVAL_REPLAY_SCHEDULE_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "eval/trace.h"

namespace moe_router {

/// One step a replay serves: the tokens routed together at one layer.
struct ReplayStep {
  uint32_t token = 0;  // the run's token, or the batch step's number
  uint32_t layer = 0;
  absl::Span<const uint32_t> experts;  // their uses: tokens x top_k
  absl::Span<const uint32_t> runs;     // each token's run (sequence)
  /// The run's step, for its logits, when the step is one run's.
  int64_t run_step = -1;
  /// In a batched schedule, each token's step in its run (for its logits).
  absl::Span<const size_t> run_steps;
  size_t tokens() const { return runs.size(); }
};

/// The steps of a replay, in order.
class ReplaySchedule {
 public:
  /// One run's steps, one token each, as the trace lists them; its experts
  /// are the trace's, viewed: the trace outlives the schedule.
  static ReplaySchedule OfRun(const RoutingTrace& trace, uint32_t run);
  /// Continuous batching: up to `batch` runs decode together, each step
  /// routing one token of every active run at one layer (layers in order
  /// within a batch step). A run joins at the first batch step after one
  /// leaves (or at the start), in trace order, and leaves after its last
  /// token; a run's tokens stay in order, and a token missing a layer adds
  /// nothing there. A run whose trace marks its prompt prefills it in the
  /// batch step it joins: each layer's step routes all its prompt tokens
  /// beside the other runs' one token each.
  static ReplaySchedule Batched(const RoutingTrace& trace, uint32_t batch);

  const std::vector<ReplayStep>& steps() const { return steps_; }

 private:
  struct Pending {
    uint32_t token, layer;
    size_t experts_begin, experts_end, runs_begin, runs_end;  // runs_: run_steps_ too
    int64_t run_step;
  };
  // `experts`: what the pending steps' experts_begin/end index.
  void Finish(std::vector<Pending> pending, absl::Span<const uint32_t> experts);

  std::vector<ReplayStep> steps_;
  std::vector<uint32_t> experts_;  // a batched schedule's; a run's are the trace's
  std::vector<uint32_t> runs_;
  std::vector<size_t> run_steps_;  // a batched schedule's
};

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_REPLAY_SCHEDULE_H_
