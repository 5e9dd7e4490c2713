#ifndef MOE_ROUTER_EVAL_REPLAY_H_
#define MOE_ROUTER_EVAL_REPLAY_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/routing/router.h"
#include "eval/step_timer.h"
#include "eval/trace.h"

namespace moe_router {

enum class BudgetMode : uint8_t {
  kPerLayer,     // `amount` experts cached per layer, one cache per layer
  kGlobalSlots,  // `amount` expert slots shared by all layers
  kGlobalBytes,  // `amount` bytes shared by all layers, experts of expert_bytes
};

struct ReplayOptions {
  BudgetMode mode = BudgetMode::kGlobalSlots;
  uint64_t amount = 0;
  uint64_t expert_bytes = 1 << 20;  // the size of every expert
  /// Eviction policies to replay (ReplayPolicyNames()).
  std::vector<std::string> policies;
  /// Per (token, layer) step, prefetch up to this many experts predicted for
  /// the next step (co-activation, then affinity). 0: demand paging only.
  uint32_t prefetch_budget = 0;
  /// For logits traces: route every step with this router (cache-aware if
  /// it has a bonus) against the cache being replayed, by the trace's
  /// routing rule and biases (this config's rule is not used), instead of
  /// taking the rule's own top-k. Belady and the peers' policies keep the
  /// trace's routing.
  std::optional<RouterConfig> router;
  /// Policies replayed at once, each on a thread of its own (they share
  /// nothing but the trace); the rows keep the order of `policies`.
  uint32_t threads = 1;
  /// Peers in their engines' own shape: vllm_lfru as vLLM pull request
  /// #37190 runs it, a cache per layer of the budget's share (fewer slots
  /// than top_k refused, as vLLM refuses to start), each step's distinct
  /// experts in id order, a miss loaded before the next is touched. false:
  /// one pool, as the service and worker caches run it.
  bool peer_shapes = true;
  /// 0: each run from a cold cache, one token a step. B > 0: continuous
  /// batching through one cache, B runs decoding together, each step
  /// routing one token of each at one layer (ReplaySchedule::Batched); B = 1
  /// is the runs back to back. With a router, each step's tokens are routed
  /// together against the cache, as a worker routes its batch.
  uint32_t batch = 0;
  /// With a hardware profile, each row also estimates milliseconds per
  /// token (StepTimer: expert_bytes per load).
  std::optional<HardwareProfile> hardware;

  absl::Status Validate() const;
};

/// One policy's outcome over the whole trace.
struct ReplayRow {
  std::string policy;
  /// Non-empty: the peer's engine refuses this budget (why), and the row
  /// has no figures.
  std::string refused;
  uint64_t accesses = 0;
  uint64_t tokens = 0;
  /// Demand paging (no prefetch): hits / accesses, loads.
  uint64_t demand_hits = 0;
  uint64_t demand_loads = 0;
  double hit_rate = 0;
  /// With prefetch (equal to demand figures when prefetch_budget is 0): an
  /// access is ready if its expert is resident, however it got there.
  uint64_t ready_hits = 0;
  uint64_t prefetch_loads = 0;
  uint64_t prefetch_used = 0;
  double ready_rate = 0;
  double loads_per_token = 0;  // demand + prefetch loads, with prefetch
  /// With ReplayOptions::hardware: estimated ms per token, demand paging
  /// and with prefetch (equal when prefetch_budget is 0); 0 without.
  double ms_per_token = 0;
  double ready_ms_per_token = 0;
  double demand_loads_per_token = 0;  // demand paging only
  /// With a router: tokens whose choice the bonus changed, and gate mass.
  double changed_fraction = 0;
  double gate_mass_mean = 1;
  double gate_mass_min = 1;
};

struct ReplayReport {
  std::vector<ReplayRow> rows;
  uint64_t tokens = 0;
  uint64_t accesses = 0;
};

/// The policies a replay can run: the engine's online policies and belady.
std::vector<std::string> ReplayPolicyNames();
/// The rows a replay table is read against: belady, lfu, lru.
std::vector<std::string> ReferencePolicyNames();
/// INVALID_ARGUMENT naming the policies there are, unless `name` is one.
absl::Status CheckReplayPolicyName(absl::string_view name);

/// Replays a trace through the real expert cache: each run (sequence) from
/// a cold cache, steps in token then layer order, the experts of a step in
/// their listed order and pinned while it is served; hit rate = hits /
/// accesses summed over runs. `progress(done, total)` is called every few
/// thousand steps and at the end, from one thread at a time.
absl::StatusOr<ReplayReport> Replay(const RoutingTrace& trace, const ReplayOptions& options,
                                    const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_REPLAY_H_
