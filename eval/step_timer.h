#ifndef MOE_ROUTER_EVAL_STEP_TIMER_H_
#define MOE_ROUTER_EVAL_STEP_TIMER_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe_router {

/// The link that pages experts into device memory, and the compute that a
/// layer's step takes once its experts are in: what turns a replay's hits
/// and loads into time per token.
struct HardwareProfile {
  std::string name;
  double link_gb_per_s = 0;         // host to device, effective, 1e9 bytes/s
  double load_latency_us = 0;       // fixed cost of each expert's load
  double compute_us_per_layer = 0;  // one layer of one decode step, experts resident
  /// One layer's compute per token a step routes, where that, not reading
  /// the weights, bounds it (a long prompt's prefill): a step computes for
  /// max(compute_us_per_layer, tokens x this). 0: never.
  double compute_us_per_token = 0;

  absl::Status Validate() const;
};

/// The named presets (pcie4-x16, pcie5-x16), for help texts.
std::vector<std::string> HardwarePresetNames();
/// A preset by name; INVALID_ARGUMENT naming the presets otherwise.
absl::StatusOr<HardwareProfile> HardwarePreset(absl::string_view name);

/// The time of a replayed run on a HardwareProfile, step by step. One link
/// carries one load at a time; a demand load goes ahead of prefetches not
/// yet started (as the engine's paging queues are ordered) but waits for
/// the one in flight; a step starts when the previous one ends, its
/// compute starts when its last expert is in (a miss, or a prefetched hit
/// still in flight), and a step's prefetches for the steps to come are
/// issued as it starts computing, as the engine issues them once a layer is
/// routed, so they overlap that compute. Not modelled: compute that starts
/// on resident experts while others load, several links, and the host's
/// own time.
class StepTimer {
 public:
  /// `slots`: the run's (layer, expert) keys, indexed layer * experts + expert.
  StepTimer(const HardwareProfile& hardware, uint64_t expert_bytes, size_t slots);

  void BeginStep() { ready_us_ = now_us_; }
  /// A miss of this step, loaded before it computes.
  void Demand(size_t slot);
  /// A hit of this step: it waits if the expert's load is still in flight.
  void Use(size_t slot);
  /// The step, of `tokens` tokens, computes and ends.
  void EndStep(size_t tokens) {
    computing_us_ = ready_us_;
    now_us_ =
        ready_us_ + std::max(compute_us_, static_cast<double>(tokens) * compute_per_token_us_);
  }
  /// A load for steps to come, issued as the step just ended began
  /// computing.
  void Prefetch(size_t slot);

  double elapsed_us() const { return now_us_; }
  double load_us() const { return load_us_; }

 private:
  struct Queued {  // a prefetch on the link, started or not
    size_t slot;
    double issued_us, start_us, end_us;
  };

  const double load_us_;     // latency + bytes / bandwidth
  const double compute_us_;  // per step
  const double compute_per_token_us_;
  double now_us_ = 0;               // when the current step may start
  double ready_us_ = 0;             // when the current step's experts are all in
  double computing_us_ = 0;         // when the last ended step began computing
  double link_free_us_ = 0;         // when the link has carried every load issued
  double demand_end_us_ = 0;        // when the latest demand load lands
  std::vector<Queued> prefetches_;  // not yet landed as of the latest demand
  std::vector<double> arrival_us_;  // per slot: when its latest load lands
};

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_STEP_TIMER_H_
