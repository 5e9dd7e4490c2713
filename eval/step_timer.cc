#include "eval/step_timer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe_router {
namespace {

// Effective pinned host-to-device copy rates of x16 links (about 80% of
// the 31.5 and 63 GB/s a direction they carry), a load's fixed cost (a copy
// call and its DMA set-up), and 200 us of compute per layer: a
// placeholder for a user's own model, which --compute-us replaces.
const HardwareProfile kPresets[] = {
    {.name = "pcie4-x16", .link_gb_per_s = 25, .load_latency_us = 10, .compute_us_per_layer = 200},
    {.name = "pcie5-x16", .link_gb_per_s = 50, .load_latency_us = 8, .compute_us_per_layer = 200},
};

bool PositiveFinite(double x) { return std::isfinite(x) && x > 0; }

}  // namespace

absl::Status HardwareProfile::Validate() const {
  if (!PositiveFinite(link_gb_per_s)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("link bandwidth must be a positive number of GB/s, got %g", link_gb_per_s));
  }
  if (!std::isfinite(load_latency_us) || load_latency_us < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "load latency must be a non-negative number of microseconds, got %g", load_latency_us));
  }
  if (!std::isfinite(compute_us_per_layer) || compute_us_per_layer < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("compute per layer must be a non-negative number of microseconds, got %g",
                        compute_us_per_layer));
  }
  if (!std::isfinite(compute_us_per_token) || compute_us_per_token < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("compute per token must be a non-negative number of microseconds, got %g",
                        compute_us_per_token));
  }
  return absl::OkStatus();
}

std::vector<std::string> HardwarePresetNames() {
  std::vector<std::string> names;
  for (const HardwareProfile& p : kPresets) names.push_back(p.name);
  return names;
}

absl::StatusOr<HardwareProfile> HardwarePreset(absl::string_view name) {
  for (const HardwareProfile& p : kPresets) {
    if (p.name == name) return p;
  }
  return absl::InvalidArgumentError(absl::StrFormat("unknown hardware '%s'; expected one of: %s",
                                                    name,
                                                    absl::StrJoin(HardwarePresetNames(), ", ")));
}

StepTimer::StepTimer(const HardwareProfile& hardware, uint64_t expert_bytes, size_t slots)
    : load_us_(hardware.load_latency_us +
               static_cast<double>(expert_bytes) / (hardware.link_gb_per_s * 1e3)),
      compute_us_(hardware.compute_us_per_layer),
      compute_per_token_us_(hardware.compute_us_per_token),
      arrival_us_(slots, 0.0) {}

void StepTimer::Demand(size_t slot) {
  // Behind the earlier demand loads and the prefetch in flight, ahead of
  // the prefetches not started, which then follow it in their order.
  const double at = now_us_;
  double start = std::max(at, demand_end_us_);
  size_t kept = 0;
  for (const Queued& q : prefetches_) {
    if (q.end_us <= at) continue;                            // landed
    if (q.start_us < at) start = std::max(start, q.end_us);  // in flight
    prefetches_[kept++] = q;
  }
  prefetches_.resize(kept);
  demand_end_us_ = start + load_us_;
  arrival_us_[slot] = demand_end_us_;
  ready_us_ = std::max(ready_us_, demand_end_us_);
  link_free_us_ = demand_end_us_;
  for (Queued& q : prefetches_) {
    if (q.start_us < at) continue;
    q.start_us = std::max(link_free_us_, q.issued_us);
    q.end_us = q.start_us + load_us_;
    arrival_us_[q.slot] = q.end_us;
    link_free_us_ = q.end_us;
  }
}

void StepTimer::Use(size_t slot) { ready_us_ = std::max(ready_us_, arrival_us_[slot]); }

void StepTimer::Prefetch(size_t slot) {
  if (!prefetches_.empty() && prefetches_.front().end_us <= computing_us_) {
    // Landed before anything still to come can overtake them.
    std::erase_if(prefetches_, [&](const Queued& q) { return q.end_us <= computing_us_; });
  }
  const double start = std::max(computing_us_, link_free_us_);
  prefetches_.push_back({slot, computing_us_, start, start + load_us_});
  link_free_us_ = start + load_us_;
  arrival_us_[slot] = link_free_us_;
}

}  // namespace moe_router
