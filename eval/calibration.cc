#include "eval/calibration.h"

#include "absl/strings/str_format.h"
#include "eval/belady_policy.h"
#include "eval/replay.h"

namespace moe_router {
namespace {

constexpr double kHitRateTolerance = 0.03;
constexpr double kStatTolerance = 0.05;

// LRU, LFU and Belady: the policies whose hit rates a calibrated trace must
// reproduce.
absl::StatusOr<std::vector<ReplayRow>> HitRates(const RoutingTrace& trace, BudgetMode mode,
                                                uint64_t amount) {
  ReplayOptions options;
  options.mode = mode;
  options.amount = amount;
  options.policies = {"lru", "lfu", kBeladyPolicyName};
  absl::StatusOr<ReplayReport> report = Replay(trace, options);
  if (!report.ok()) return report.status();
  return report->rows;
}

}  // namespace

absl::StatusOr<std::vector<CalibrationRow>> CompareTraces(const RoutingTrace& generated,
                                                          const RoutingTrace& real) {
  if (generated.num_layers != real.num_layers || generated.num_experts != real.num_experts ||
      generated.top_k != real.top_k) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shapes differ: generated %dx%d top-%d, real %dx%d top-%d", generated.num_layers,
        generated.num_experts, generated.top_k, real.num_layers, real.num_experts, real.top_k));
  }
  std::vector<CalibrationRow> rows;
  const uint64_t per_layer = real.num_experts / 2;
  const uint64_t global = uint64_t{real.num_layers} * real.num_experts / 2;
  for (const auto& [mode, amount, label] :
       {std::tuple{BudgetMode::kPerLayer, per_layer, absl::StrFormat("per-layer %d", per_layer)},
        std::tuple{BudgetMode::kGlobalSlots, global, absl::StrFormat("global %d", global)}}) {
    auto g = HitRates(generated, mode, amount);
    auto r = HitRates(real, mode, amount);
    if (!g.ok()) return g.status();
    if (!r.ok()) return r.status();
    for (size_t i = 0; i < g->size(); ++i) {
      rows.push_back({absl::StrFormat("%s %s hit rate", label, (*g)[i].policy), (*g)[i].hit_rate,
                      (*r)[i].hit_rate, kHitRateTolerance});
    }
  }
  const TraceStats g = ComputeTraceStats(generated);
  const TraceStats r = ComputeTraceStats(real);
  rows.push_back({"consecutive-token overlap", g.overlap_mean, r.overlap_mean, kStatTolerance});
  rows.push_back({"first-choice recurrence", g.first_choice_recurrence, r.first_choice_recurrence,
                  kStatTolerance});
  rows.push_back({"busiest expert share / mean share", g.skew_mean, r.skew_mean, kStatTolerance});
  return rows;
}

}  // namespace moe_router
