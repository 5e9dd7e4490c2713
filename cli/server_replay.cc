#include "cli/server_replay.h"

#include <chrono>
#include <vector>

#include "absl/strings/str_format.h"

namespace moe_router {

void LogitsForChoice(absl::Span<const uint32_t> experts, std::vector<float>& logits) {
  std::fill(logits.begin(), logits.end(), -30.0f);
  for (size_t rank = 0; rank < experts.size(); ++rank) {
    logits[experts[rank]] = -0.01f * static_cast<float>(rank);
  }
}

absl::Status CheckModelFitsTrace(Client& client, const std::string& model,
                                 const RoutingTrace& trace) {
  auto spec = client.FindModel(model);
  if (!spec.ok()) return spec.status();
  if (spec->num_experts() != trace.num_experts || spec->top_k() != trace.top_k ||
      spec->num_layers() < trace.num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s' has %u layers, %u experts, top-%u; the trace needs at least %u layers, "
        "%u experts, top-%u",
        model, spec->num_layers(), spec->num_experts(), spec->top_k(), trace.num_layers,
        trace.num_experts, trace.top_k));
  }
  return absl::OkStatus();
}

absl::Span<const float> StepLogitsForServer(const RoutingTrace& trace, const RoutingTrace::Run& run,
                                            size_t step, std::vector<float>& scratch) {
  if (trace.has_logits()) return trace.StepLogits(run, step);
  scratch.resize(trace.num_experts);
  LogitsForChoice(trace.StepExperts(run, step), scratch);
  return scratch;
}

absl::StatusOr<ServerReplayReport> ReplayThroughServer(
    Client& client, const std::string& model, const RoutingTrace& trace, bool stream,
    const std::function<void(uint64_t, uint64_t)>& progress) {
  if (absl::Status s = CheckModelFitsTrace(client, model, trace); !s.ok()) return s;
  std::unique_ptr<RouteStream> route_stream = stream ? client.OpenRouteStream(model) : nullptr;
  ServerReplayReport report;
  const uint64_t total = trace.Steps();
  std::vector<float> logits(trace.num_experts);
  const auto start = std::chrono::steady_clock::now();
  for (const RoutingTrace::Run& run : trace.runs) {
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const uint32_t layer = run.steps[i].layer;
      const absl::Span<const float> step_logits = StepLogitsForServer(trace, run, i, logits);
      auto routed = stream ? route_stream->Route(model, layer, step_logits)
                           : client.Route(model, layer, step_logits);
      if (!routed.ok()) {
        return absl::Status(routed.status().code(),
                            absl::StrFormat("run %s, token %u, layer %u: %s", run.name,
                                            run.steps[i].token, layer, routed.status().message()));
      }
      ++report.steps;
      report.accesses += routed->resident_size();
      for (bool r : routed->resident()) report.resident += r;
      report.changed_tokens += routed->changed_tokens();
      report.gate_mass_sum += routed->gate_mass_retained();
      report.urgent_page_ins += routed->urgent_page_ins_size();
      report.prefetches += routed->prefetches_size();
      progress(report.steps, total);
    }
  }
  if (route_stream != nullptr) {
    if (absl::Status s = route_stream->Finish(); !s.ok()) return s;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace moe_router
