#ifndef MOE_ROUTER_CLI_SERVER_REPLAY_H_
#define MOE_ROUTER_CLI_SERVER_REPLAY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "eval/trace.h"

namespace moe_router {

/// What a trace did to a running server's model.
struct ServerReplayReport {
  uint64_t steps = 0;     // RouteTokens requests, one per (token, layer)
  uint64_t accesses = 0;  // chosen experts
  uint64_t resident = 0;  // of those, resident when chosen
  uint64_t changed_tokens = 0;
  double gate_mass_sum = 0;
  uint64_t urgent_page_ins = 0;  // queued by the replay's requests
  uint64_t prefetches = 0;
  double seconds = 0;
  double HitRate() const { return accesses == 0 ? 0 : static_cast<double>(resident) / accesses; }
};

/// Logits whose top-k is the recorded choice, in its order, with the rest so
/// far below that no cache bonus can make up the gate mass a reroute would
/// lose: the server's guard keeps the recorded routing.
void LogitsForChoice(absl::Span<const uint32_t> experts, std::vector<float>& logits);
/// What to send for a step: a logits trace's logits, or LogitsForChoice of
/// a routing trace's choice (in `scratch`).
absl::Span<const float> StepLogitsForServer(const RoutingTrace& trace, const RoutingTrace::Run& run,
                                            size_t step, std::vector<float>& scratch);
/// INVALID_ARGUMENT unless the server's `model` has the trace's experts and
/// top-k and at least its layers.
absl::Status CheckModelFitsTrace(Client& client, const std::string& model,
                                 const RoutingTrace& trace);

/// Routes every step of `trace` through `model` on the server, in the
/// trace's order (token, then layer), one request per step as an inference
/// worker would, over unary RouteTokens or one RouteStream. Logits traces
/// send their logits; routing traces send logits that reproduce their
/// recorded choice. The model must have the trace's experts and top-k and at
/// least its layers. `progress(done, total)` is called after each step.
absl::StatusOr<ServerReplayReport> ReplayThroughServer(
    Client& client, const std::string& model, const RoutingTrace& trace, bool stream,
    const std::function<void(uint64_t, uint64_t)>& progress);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_SERVER_REPLAY_H_
