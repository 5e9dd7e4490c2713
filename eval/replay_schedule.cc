#include "eval/replay_schedule.h"

#include <deque>

namespace moe_router {

void ReplaySchedule::Finish(std::vector<Pending> pending, absl::Span<const uint32_t> experts) {
  steps_.reserve(pending.size());
  for (const Pending& p : pending) {
    steps_.push_back(ReplayStep{
        .token = p.token,
        .layer = p.layer,
        .experts = experts.subspan(p.experts_begin, p.experts_end - p.experts_begin),
        .runs = absl::MakeConstSpan(runs_).subspan(p.runs_begin, p.runs_end - p.runs_begin),
        .run_step = p.run_step});
  }
}

ReplaySchedule ReplaySchedule::OfRun(const RoutingTrace& trace, uint32_t run) {
  const RoutingTrace::Run& r = trace.runs[run];
  ReplaySchedule s;
  s.runs_.assign(1, run);
  std::vector<Pending> pending;
  pending.reserve(r.steps.size());
  for (size_t i = 0; i < r.steps.size(); ++i) {
    pending.push_back({r.steps[i].token, r.steps[i].layer, i * trace.top_k, (i + 1) * trace.top_k,
                       0, 1, static_cast<int64_t>(i)});
  }
  s.Finish(std::move(pending), r.experts);
  return s;
}

ReplaySchedule ReplaySchedule::Batched(const RoutingTrace& trace, uint32_t batch) {
  struct Active {
    uint32_t run;
    size_t next;  // its first step not yet scheduled
  };
  ReplaySchedule s;
  std::vector<Pending> pending;
  std::deque<uint32_t> waiting;
  for (uint32_t r = 0; r < trace.runs.size(); ++r) {
    if (!trace.runs[r].steps.empty()) waiting.push_back(r);
  }
  std::vector<Active> active;
  std::vector<size_t> token_end;  // per active run: the end of its current token's steps
  for (uint32_t batch_step = 0; !waiting.empty() || !active.empty(); ++batch_step) {
    while (active.size() < batch && !waiting.empty()) {
      active.push_back({waiting.front(), 0});
      waiting.pop_front();
    }
    token_end.resize(active.size());
    for (size_t a = 0; a < active.size(); ++a) {
      const RoutingTrace::Run& run = trace.runs[active[a].run];
      size_t end = active[a].next;
      while (end < run.steps.size() && run.steps[end].token == run.steps[active[a].next].token) {
        ++end;
      }
      token_end[a] = end;
    }
    for (uint32_t layer = 0; layer < trace.num_layers; ++layer) {
      const size_t experts_begin = s.experts_.size(), runs_begin = s.runs_.size();
      for (size_t a = 0; a < active.size(); ++a) {
        const RoutingTrace::Run& run = trace.runs[active[a].run];
        size_t& next = active[a].next;
        if (next < token_end[a] && run.steps[next].layer == layer) {
          const auto experts = trace.StepExperts(run, next);
          s.experts_.insert(s.experts_.end(), experts.begin(), experts.end());
          s.runs_.push_back(active[a].run);
          ++next;
        }
      }
      if (s.runs_.size() > runs_begin) {
        pending.push_back(
            {batch_step, layer, experts_begin, s.experts_.size(), runs_begin, s.runs_.size(), -1});
      }
    }
    std::vector<Active> staying;
    for (size_t a = 0; a < active.size(); ++a) {
      active[a].next = token_end[a];
      if (active[a].next < trace.runs[active[a].run].steps.size()) staying.push_back(active[a]);
    }
    active = std::move(staying);
  }
  s.Finish(std::move(pending), s.experts_);
  return s;
}

}  // namespace moe_router
