// moe-router sweep: cache-aware routing on a calibrated synthetic trace,
// hit rate against gate mass retained and tokens changed, per cache bonus
// and quality guard; a table, JSON, and SVG plots.
#include <algorithm>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/svg_plot.h"
#include "core/base/file_io.h"
#include "core/model/model_config.h"
#include "eval/replay.h"
#include "eval/workload.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace {

const std::vector<FlagSpec>& SweepFlags() {
  static const std::vector<FlagSpec> flags = {
      {"preset", true, false, "workload preset (default mixtral)"},
      {"sequences", true, false, "sequences (default 8)"},
      {"tokens", true, false, "tokens per sequence (default 128)"},
      {"seed", true, false, "trace seed (default 1)"},
      {"policy", true, false, "eviction policy (default layer_reuse)"},
      {"budget-fraction", true, false, "global budget as a fraction of all experts (default 0.5)"},
      {"bonus", true, false, "comma-separated relative bonuses (default 0,0.05,...,1)"},
      {"guard", true, true,
       "protected_top:max_rank[:min_gate_mass], repeatable (default, for top-k: P:k+2 P:k+6 "
       "P:k+2:0.7 P:k+6:0.7, P = 1, or 0 for a top-1 model)"},
      {"rule", true, false, "route by this rule instead of the preset's (e.g. mixtral: softmax)"},
      {"groups", true, false, "the rule's group count (1: no group limit)"},
      {"svg", true, false, "write plots to PREFIX-gate-mass.svg and PREFIX-changed.svg"},
      {"json", false, false, "print JSON instead of a table"},
  };
  return flags;
}

struct Guard {
  uint32_t protected_top = 1;
  uint32_t max_rank = 0;
  double min_gate_mass = 0;
  std::string Name() const {
    return min_gate_mass > 0
               ? absl::StrFormat("protected %u, max rank %u, mass >= %.2g", protected_top, max_rank,
                                 min_gate_mass)
               : absl::StrFormat("protected %u, max rank %u", protected_top, max_rank);
  }
};

struct Point {
  Guard guard;
  double bonus;
  ReplayRow row;
};

// What the flags ask for.
struct SweepSpec {
  std::string preset_name;
  WorkloadPreset preset;
  uint64_t sequences = 8, tokens = 128, seed = 1;
  double budget_fraction = 0.5;
  std::string policy;
  std::vector<double> bonuses = {0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0};
  std::vector<Guard> guards;
};

// The default guards for a top-k model: candidates up to k + 2 and k + 6,
// without and with a gate-mass floor, the original top expert protected
// unless it is the only one.
std::vector<Guard> DefaultGuards(uint32_t top_k, uint32_t num_experts) {
  const uint32_t protect = top_k > 1 ? 1 : 0;
  const uint32_t narrow = std::min({top_k + 2, num_experts, kMaxRank});
  const uint32_t wide = std::min({top_k + 6, num_experts, kMaxRank});
  return {{protect, narrow, 0}, {protect, wide, 0}, {protect, narrow, 0.7}, {protect, wide, 0.7}};
}

absl::StatusOr<std::vector<double>> ParseBonuses(const std::string& text) {
  std::vector<double> bonuses;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    double b;
    if (!absl::SimpleAtod(part, &b)) {
      return absl::InvalidArgumentError(absl::StrFormat("bad bonus '%s'", part));
    }
    bonuses.push_back(b);
  }
  return bonuses;
}

absl::StatusOr<Guard> ParseGuard(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  Guard guard;
  if (parts.size() < 2 || parts.size() > 3 || !absl::SimpleAtoi(parts[0], &guard.protected_top) ||
      !absl::SimpleAtoi(parts[1], &guard.max_rank) ||
      (parts.size() == 3 && !absl::SimpleAtod(parts[2], &guard.min_gate_mass))) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bad --guard '%s' (expected protected_top:max_rank[:min_gate_mass])", text));
  }
  return guard;
}

absl::StatusOr<SweepSpec> ParseSweep(const CommandLine& cl) {
  SweepSpec spec;
  spec.preset_name = cl.Value("preset", "mixtral");
  auto preset = GetWorkloadPreset(spec.preset_name);
  if (!preset.ok()) return preset.status();
  spec.preset = *preset;
  RoutingRule& rule = spec.preset.shape.rule;
  if (cl.Has("rule")) {
    auto named = RoutingRulePreset(cl.Value("rule"));
    if (!named.ok()) return named.status();
    rule = *named;
  }
  auto groups = cl.Count("groups", rule.num_groups);
  if (!groups.ok()) return groups.status();
  rule.num_groups = static_cast<uint32_t>(*groups);
  rule.kept_groups = std::min(rule.kept_groups, rule.num_groups);
  if (absl::Status s = spec.preset.shape.Validate(); !s.ok()) return s;
  spec.guards = DefaultGuards(spec.preset.shape.top_k, spec.preset.shape.num_experts);
  auto sequences = cl.Count("sequences", spec.sequences);
  auto tokens = cl.Count("tokens", spec.tokens);
  auto seed = cl.Count("seed", spec.seed);
  auto fraction = cl.Number("budget-fraction", spec.budget_fraction);
  for (const absl::Status& s :
       {sequences.status(), tokens.status(), seed.status(), fraction.status()}) {
    if (!s.ok()) return s;
  }
  spec.sequences = *sequences;
  spec.tokens = *tokens;
  spec.seed = *seed;
  spec.budget_fraction = *fraction;
  spec.policy = cl.Value("policy", kDefaultEvictionPolicy);
  if (cl.Has("bonus")) {
    auto bonuses = ParseBonuses(cl.Value("bonus"));
    if (!bonuses.ok()) return bonuses.status();
    spec.bonuses = *std::move(bonuses);
  }
  if (cl.Has("guard")) {
    spec.guards.clear();
    for (const std::string& g : cl.Values("guard")) {
      auto guard = ParseGuard(g);
      if (!guard.ok()) return guard.status();
      spec.guards.push_back(*guard);
    }
  }
  return spec;
}

// The routing-unchanged baselines (lru, then the policy) and one replay per
// guard and bonus, with a progress bar.
struct SweepResult {
  uint64_t budget = 0;
  ReplayReport baseline;
  std::vector<Point> points;
};

absl::StatusOr<SweepResult> RunSweep(const SweepSpec& spec) {
  const WorkloadShape& shape = spec.preset.shape;
  const RoutingTrace trace = GenerateTrace(shape, static_cast<uint32_t>(spec.sequences),
                                           static_cast<uint32_t>(spec.tokens), spec.seed);
  SweepResult result;
  ReplayOptions options;
  options.mode = BudgetMode::kGlobalSlots;
  options.amount =
      static_cast<uint64_t>(spec.budget_fraction * shape.num_layers * shape.num_experts);
  result.budget = options.amount;
  options.policies = {"lru", spec.policy};
  auto baseline = Replay(trace, options);
  if (!baseline.ok()) return baseline.status();
  result.baseline = *std::move(baseline);

  options.policies = {spec.policy};
  ProgressBar bar("sweep", spec.guards.size() * spec.bonuses.size());
  for (const Guard& guard : spec.guards) {
    for (double bonus : spec.bonuses) {
      RouterConfig router;
      router.num_experts = shape.num_experts;
      router.top_k = shape.top_k;
      router.rule = shape.rule;
      router.cache_bonus = bonus;
      router.protected_top = guard.protected_top;
      router.max_rank = guard.max_rank;
      router.min_gate_mass = guard.min_gate_mass;
      options.router = router;
      auto report = Replay(trace, options);
      if (!report.ok()) return report.status();
      result.points.push_back({guard, bonus, report->rows[0]});
      bar.Update(result.points.size());
    }
  }
  bar.Finish();
  return result;
}

void PrintJson(const SweepSpec& spec, const SweepResult& result) {
  nlohmann::json rows = nlohmann::json::array();
  for (const Point& p : result.points) {
    rows.push_back({{"protected_top", p.guard.protected_top},
                    {"max_rank", p.guard.max_rank},
                    {"min_gate_mass", p.guard.min_gate_mass},
                    {"bonus", p.bonus},
                    {"hit_rate", p.row.hit_rate},
                    {"gate_mass_mean", p.row.gate_mass_mean},
                    {"gate_mass_min", p.row.gate_mass_min},
                    {"changed_fraction", p.row.changed_fraction}});
  }
  const nlohmann::json out = {{"rule", DescribeRoutingRule(spec.preset.shape.rule)},
                              {"baseline_lru", result.baseline.rows[0].hit_rate},
                              {"baseline_policy", result.baseline.rows[1].hit_rate},
                              {"rows", rows}};
  std::printf("%s\n", out.dump(2).c_str());
}

void PrintTable(const SweepSpec& spec, const SweepResult& result) {
  const WorkloadShape& shape = spec.preset.shape;
  std::printf(
      "trace: %s preset, %llu sequences x %llu tokens (seed %llu); global budget %llu "
      "of %u experts; policy %s\n",
      spec.preset_name.c_str(), static_cast<unsigned long long>(spec.sequences),
      static_cast<unsigned long long>(spec.tokens), static_cast<unsigned long long>(spec.seed),
      static_cast<unsigned long long>(result.budget), shape.num_layers * shape.num_experts,
      spec.policy.c_str());
  std::printf("routing rule: %s\n", DescribeRoutingRule(shape.rule).c_str());
  std::printf("routing unchanged: lru %.3f, %s %.3f\n\n", result.baseline.rows[0].hit_rate,
              spec.policy.c_str(), result.baseline.rows[1].hit_rate);
  std::printf("%9s %8s %9s %6s %9s %14s %13s %8s\n", "protected", "max_rank", "min_mass", "bonus",
              "hit_rate", "gate_mass_mean", "gate_mass_min", "changed");
  for (const Point& p : result.points) {
    std::printf("%9u %8u %9.2f %6.2f %9.3f %14.4f %13.4f %8.3f\n", p.guard.protected_top,
                p.guard.max_rank, p.guard.min_gate_mass, p.bonus, p.row.hit_rate,
                p.row.gate_mass_mean, p.row.gate_mass_min, p.row.changed_fraction);
  }
}

// Hit rate against gate mass retained (by_mass) or against tokens rerouted,
// one series per guard.
Plot SweepPlot(const SweepSpec& spec, const std::vector<Point>& points, bool by_mass) {
  Plot plot;
  plot.title = absl::StrFormat("Cache-aware routing, %s preset (%s), budget %.0f%% of experts",
                               spec.preset_name, DescribeRoutingRule(spec.preset.shape.rule),
                               spec.budget_fraction * 100);
  plot.y_label = "cache hit rate";
  plot.x_label = by_mass ? "mean gate mass retained" : "fraction of tokens rerouted";
  plot.y_goal = 0.80;
  if (by_mass) plot.x_goal = 0.95;
  const auto x_of = [by_mass](const Point& p) {
    return by_mass ? p.row.gate_mass_mean : p.row.changed_fraction;
  };
  // Axes fitted to the points and the goal lines, with a margin.
  double x_lo = by_mass ? plot.x_goal : 0, x_hi = x_lo, y_lo = plot.y_goal, y_hi = y_lo;
  for (const Point& p : points) {
    x_lo = std::min(x_lo, x_of(p));
    x_hi = std::max(x_hi, x_of(p));
    y_lo = std::min(y_lo, p.row.hit_rate);
    y_hi = std::max(y_hi, p.row.hit_rate);
  }
  plot.x_min = x_lo - 0.05 * (x_hi - x_lo);
  plot.x_max = x_hi + 0.05 * (x_hi - x_lo);
  plot.y_min = y_lo - 0.05 * (y_hi - y_lo);
  plot.y_max = y_hi + 0.05 * (y_hi - y_lo);
  for (size_t g = 0; g < spec.guards.size(); ++g) {
    PlotSeries series;
    series.name = spec.guards[g].Name();
    for (const Point& p : points) {
      if (p.guard.Name() != series.name) continue;
      series.x.push_back(x_of(p));
      series.y.push_back(p.row.hit_rate);
      // Bonus labels on the last series only, to keep the plot readable.
      series.labels.push_back(g + 1 == spec.guards.size() ? absl::StrFormat("%.2g", p.bonus) : "");
    }
    plot.series.push_back(std::move(series));
  }
  return plot;
}

}  // namespace

int SweepCommand(const std::vector<std::string>& args) {
  auto cl = CommandLine::Parse(args, SweepFlags());
  if (!cl.ok() || !cl->positional().empty()) {
    return CommandUsage("sweep", "[flags]", cl.status(), SweepFlags());
  }
  auto spec = ParseSweep(*cl);
  if (!spec.ok()) return CommandError("sweep", spec.status(), 2);
  auto result = RunSweep(*spec);
  if (!result.ok()) return CommandError("sweep", result.status(), 2);
  if (cl->Has("json")) {
    PrintJson(*spec, *result);
  } else {
    PrintTable(*spec, *result);
  }
  if (cl->Has("svg")) {
    for (const bool by_mass : {true, false}) {
      const std::string path = cl->Value("svg") + (by_mass ? "-gate-mass.svg" : "-changed.svg");
      const Plot plot = SweepPlot(*spec, result->points, by_mass);
      if (absl::Status s = WriteFileAtomically(path, RenderSvg(plot)); !s.ok()) {
        return CommandError("sweep", s);
      }
      std::fprintf(stderr, "wrote %s\n", path.c_str());
    }
  }
  return 0;
}

}  // namespace moe_router
