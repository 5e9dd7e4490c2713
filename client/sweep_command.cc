// moe-router sweep: cache-aware routing on a calibrated synthetic trace,
// hit rate against gate mass retained and tokens changed, per cache bonus
// and quality guard; a table, JSON, and SVG plots.
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/command_line.h"
#include "client/commands.h"
#include "client/progress.h"
#include "client/svg_plot.h"
#include "core/file_io.h"
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
      {"guard", true, true, "protected_top:max_rank[:min_gate_mass], repeatable (default "
                            "1:4 1:8 1:4:0.7 1:8:0.7)"},
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
    return min_gate_mass > 0 ? absl::StrFormat("protected %u, max rank %u, mass >= %.2g",
                                               protected_top, max_rank, min_gate_mass)
                             : absl::StrFormat("protected %u, max rank %u", protected_top,
                                               max_rank);
  }
};

struct Point {
  Guard guard;
  double bonus;
  ReplayRow row;
};

}  // namespace

int SweepCommand(const std::vector<std::string>& args) {
  auto cl = CommandLine::Parse(args, SweepFlags());
  if (!cl.ok() || !cl->positional().empty()) {
    return CommandUsage("sweep", "[flags]", cl.status(), SweepFlags());
  }
  auto preset = GetWorkloadPreset(cl->Value("preset", "mixtral"));
  if (!preset.ok()) return CommandError("sweep", preset.status(), 2);
  auto sequences = cl->Count("sequences", 8);
  auto tokens = cl->Count("tokens", 128);
  auto seed = cl->Count("seed", 1);
  auto fraction = cl->Number("budget-fraction", 0.5);
  for (const absl::Status& s : {sequences.status(), tokens.status(), seed.status(), fraction.status()}) {
    if (!s.ok()) return CommandError("sweep", s, 2);
  }
  std::vector<double> bonuses = {0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0};
  if (cl->Has("bonus")) {
    bonuses.clear();
    for (absl::string_view part : absl::StrSplit(cl->Value("bonus"), ',')) {
      double b;
      if (!absl::SimpleAtod(part, &b)) {
        return CommandError("sweep", absl::InvalidArgumentError(absl::StrFormat("bad bonus '%s'", part)), 2);
      }
      bonuses.push_back(b);
    }
  }
  std::vector<Guard> guards = {{1, 4, 0}, {1, 8, 0}, {1, 4, 0.7}, {1, 8, 0.7}};
  if (cl->Has("guard")) {
    guards.clear();
    for (const std::string& g : cl->Values("guard")) {
      std::vector<std::string> parts = absl::StrSplit(g, ':');
      Guard guard;
      if (parts.size() < 2 || parts.size() > 3 || !absl::SimpleAtoi(parts[0], &guard.protected_top) ||
          !absl::SimpleAtoi(parts[1], &guard.max_rank) ||
          (parts.size() == 3 && !absl::SimpleAtod(parts[2], &guard.min_gate_mass))) {
        return CommandError("sweep", absl::InvalidArgumentError(absl::StrFormat(
                        "bad --guard '%s' (expected protected_top:max_rank[:min_gate_mass])", g)),
                    2);
      }
      guards.push_back(guard);
    }
  }
  const WorkloadShape& shape = preset->shape;
  const RoutingTrace trace = GenerateTrace(shape, static_cast<uint32_t>(*sequences),
                                           static_cast<uint32_t>(*tokens), *seed);
  ReplayOptions options;
  options.mode = BudgetMode::kGlobalSlots;
  options.amount = static_cast<uint64_t>(*fraction * shape.num_layers * shape.num_experts);
  options.policies = {cl->Value("policy", "layer_reuse")};

  // Baselines with routing unchanged.
  ReplayOptions baseline = options;
  baseline.policies = {"lru", options.policies[0]};
  auto base = Replay(trace, baseline);
  if (!base.ok()) return CommandError("sweep", base.status());

  std::vector<Point> points;
  ProgressBar bar("sweep", guards.size() * bonuses.size());
  for (const Guard& guard : guards) {
    for (double bonus : bonuses) {
      RouterConfig router;
      router.num_experts = shape.num_experts;
      router.top_k = shape.top_k;
      router.cache_bonus = bonus;
      router.protected_top = guard.protected_top;
      router.max_rank = guard.max_rank;
      router.min_gate_mass = guard.min_gate_mass;
      options.router = router;
      auto report = Replay(trace, options);
      if (!report.ok()) return CommandError("sweep", report.status(), 2);
      points.push_back({guard, bonus, report->rows[0]});
      bar.Update(points.size());
    }
  }
  bar.Finish();

  if (cl->Has("json")) {
    nlohmann::json rows = nlohmann::json::array();
    for (const Point& p : points) {
      rows.push_back({{"protected_top", p.guard.protected_top}, {"max_rank", p.guard.max_rank},
                      {"min_gate_mass", p.guard.min_gate_mass},
                      {"bonus", p.bonus}, {"hit_rate", p.row.hit_rate},
                      {"gate_mass_mean", p.row.gate_mass_mean},
                      {"gate_mass_min", p.row.gate_mass_min},
                      {"changed_fraction", p.row.changed_fraction}});
    }
    const nlohmann::json out = {{"baseline_lru", base->rows[0].hit_rate},
                                {"baseline_policy", base->rows[1].hit_rate},
                                {"rows", rows}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("trace: %s preset, %llu sequences x %llu tokens (seed %llu); global budget %llu "
                "of %u experts; policy %s\n",
                cl->Value("preset", "mixtral").c_str(), static_cast<unsigned long long>(*sequences),
                static_cast<unsigned long long>(*tokens), static_cast<unsigned long long>(*seed),
                static_cast<unsigned long long>(options.amount), shape.num_layers * shape.num_experts,
                options.policies[0].c_str());
    std::printf("routing unchanged: lru %.3f, %s %.3f\n\n", base->rows[0].hit_rate,
                options.policies[0].c_str(), base->rows[1].hit_rate);
    std::printf("%9s %8s %9s %6s %9s %14s %13s %8s\n", "protected", "max_rank", "min_mass",
                "bonus", "hit_rate", "gate_mass_mean", "gate_mass_min", "changed");
    for (const Point& p : points) {
      std::printf("%9u %8u %9.2f %6.2f %9.3f %14.4f %13.4f %8.3f\n", p.guard.protected_top,
                  p.guard.max_rank, p.guard.min_gate_mass, p.bonus, p.row.hit_rate,
                  p.row.gate_mass_mean, p.row.gate_mass_min, p.row.changed_fraction);
    }
  }

  if (cl->Has("svg")) {
    for (const bool by_mass : {true, false}) {
      Plot plot;
      plot.title = absl::StrFormat("Cache-aware routing, %s preset, budget %.0f%% of experts",
                                   cl->Value("preset", "mixtral"), *fraction * 100);
      plot.y_label = "cache hit rate";
      plot.x_label = by_mass ? "mean gate mass retained" : "fraction of tokens rerouted";
      plot.y_goal = 0.80;
      if (by_mass) plot.x_goal = 0.95;
      // Axes fitted to the points and the goal lines, with a margin.
      double x_lo = by_mass ? plot.x_goal : 0, x_hi = x_lo, y_lo = plot.y_goal, y_hi = y_lo;
      for (const Point& p : points) {
        const double x = by_mass ? p.row.gate_mass_mean : p.row.changed_fraction;
        x_lo = std::min(x_lo, x);
        x_hi = std::max(x_hi, x);
        y_lo = std::min(y_lo, p.row.hit_rate);
        y_hi = std::max(y_hi, p.row.hit_rate);
      }
      plot.x_min = x_lo - 0.05 * (x_hi - x_lo);
      plot.x_max = x_hi + 0.05 * (x_hi - x_lo);
      plot.y_min = y_lo - 0.05 * (y_hi - y_lo);
      plot.y_max = y_hi + 0.05 * (y_hi - y_lo);
      for (size_t g = 0; g < guards.size(); ++g) {
        PlotSeries series;
        series.name = guards[g].Name();
        for (const Point& p : points) {
          if (p.guard.Name() != series.name) continue;
          series.x.push_back(by_mass ? p.row.gate_mass_mean : p.row.changed_fraction);
          series.y.push_back(p.row.hit_rate);
          // Bonus labels on the last series only, to keep the plot readable.
          series.labels.push_back(g + 1 == guards.size() ? absl::StrFormat("%.2g", p.bonus) : "");
        }
        plot.series.push_back(std::move(series));
      }
      const std::string path =
          cl->Value("svg") + (by_mass ? "-gate-mass.svg" : "-changed.svg");
      if (absl::Status s = WriteFileAtomically(path, RenderSvg(plot)); !s.ok()) return CommandError("sweep", s);
      std::fprintf(stderr, "wrote %s\n", path.c_str());
    }
  }
  return 0;
}

}  // namespace moe_router
