#include "eval/replay_schedule.h"

#include <algorithm>
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
        .run_step = p.run_step,
        .run_steps = run_steps_.empty() ? absl::Span<const size_t>()
                                        : absl::MakeConstSpan(run_steps_)
                                              .subspan(p.runs_begin, p.runs_end - p.runs_begin)});
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
  // Per active run, the steps it routes this batch step, by layer (one
  // token's, or a joining run's whole prompt), and how far each layer got.
  std::vector<std::vector<size_t>> now;
  std::vector<size_t> cursor, end;
  for (uint32_t batch_step = 0; !waiting.empty() || !active.empty(); ++batch_step) {
    while (active.size() < batch && !waiting.empty()) {
      active.push_back({waiting.front(), 0});
      waiting.pop_front();
    }
    now.resize(active.size());
    cursor.assign(active.size(), 0);
    end.resize(active.size());
    for (size_t a = 0; a < active.size(); ++a) {
      const RoutingTrace::Run& run = trace.runs[active[a].run];
      const size_t first = active[a].next;
      const uint32_t token = run.steps[first].token;
      // A run joining with a marked prompt prefills it in this step.
      const uint32_t last = first == 0 && token < run.prompt_tokens ? run.prompt_tokens - 1 : token;
      size_t e = first;
      while (e < run.steps.size() && run.steps[e].token <= last) ++e;
      end[a] = e;
      now[a].clear();
      for (size_t i = first; i < e; ++i) now[a].push_back(i);
      if (last != token) {  // a prompt: token then layer order to layer then token
        std::stable_sort(now[a].begin(), now[a].end(), [&](size_t x, size_t y) {
          return run.steps[x].layer < run.steps[y].layer;
        });
      }
    }
    for (uint32_t layer = 0; layer < trace.num_layers; ++layer) {
      const size_t experts_begin = s.experts_.size(), runs_begin = s.runs_.size();
      for (size_t a = 0; a < active.size(); ++a) {
        const RoutingTrace::Run& run = trace.runs[active[a].run];
        for (size_t& c = cursor[a]; c < now[a].size() && run.steps[now[a][c]].layer == layer; ++c) {
          const auto experts = trace.StepExperts(run, now[a][c]);
          s.experts_.insert(s.experts_.end(), experts.begin(), experts.end());
          s.runs_.push_back(active[a].run);
          s.run_steps_.push_back(now[a][c]);
        }
      }
      if (s.runs_.size() > runs_begin) {
        pending.push_back(
            {batch_step, layer, experts_begin, s.experts_.size(), runs_begin, s.runs_.size(), -1});
      }
    }
    std::vector<Active> staying;
    for (size_t a = 0; a < active.size(); ++a) {
      active[a].next = end[a];
      if (active[a].next < trace.runs[active[a].run].steps.size()) staying.push_back(active[a]);
    }
    active = std::move(staying);
  }
  s.Finish(std::move(pending), s.experts_);
  return s;
}

}  // namespace moe_router
