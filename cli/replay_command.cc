// moe-router replay TRACE (--per-layer C | --global-slots S | --global-bytes B)
//   [--policy P]... [--peers] [--prefetch-budget N] [--json] [routing flags for logits traces]
// moe-router replay TRACE --budgets 32,64 | 10%,25% [--plot OUT.svg] [--as-one-run] [...]
// moe-router replay --server ADDR TRACE [--model M] [--stream] [--json]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/server_connection.h"
#include "cli/server_replay.h"
#include "cli/svg_plot.h"
#include "core/base/file_io.h"
#include "core/cache/eviction_policy.h"
#include "core/cache/peer_policies.h"
#include "core/model/model_config.h"
#include "eval/belady_policy.h"
#include "eval/replay.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace {

// Flags of the local replay; with --server the server's model decides budget,
// policy and routing, so these are refused there.
const std::vector<FlagSpec>& LocalReplayFlags() {
  static const std::vector<FlagSpec> flags = {
      {"per-layer", true, false, "C experts cached per layer"},
      {"budgets", true, false,
       "global slot budgets to sweep in one run: 32,64,128, or percentages of the experts: "
       "10%,25%,50%"},
      {"plot", true, false, "with --budgets: write the hit rate against budget as an SVG"},
      {"as-one-run", false, false, "play the trace's runs back to back, as one worker's cache"},
      {"batch", true, false,
       "B runs decode together through one cache, one token of each a step, a marked prompt "
       "prefilled in one (continuous batching; 1: --as-one-run)"},
      {"global-slots", true, false, "S expert slots shared by all layers"},
      {"global-bytes", true, false, "B bytes shared by all layers"},
      {"expert-bytes", true, false, "bytes per expert (default 1048576)"},
      {"policy", true, true,
       "eviction policy, repeatable (default: all of ours); lru, lfu and belady "
       "are always reported (with --bonus, belady pages the trace's own routing)"},
      {"peers", false, false,
       "add the engines' own caches (llama_cpp, llama_cpp_lru, sglang, vllm_lfru, least_stale; "
       "no prefetch, no bonus) and set every policy against the best of them and belady"},
      {"prefetch-budget", true, false, "experts prefetched per step (default 0)"},
      {"threads", true, false, "policies replayed at once (default: the machine's cores)"},
      {"bonus", true, false, "logits traces: reroute with this relative cache bonus"},
      {"protected-top", true, false, "logits traces: experts the bonus may not displace (1)"},
      {"max-rank", true, false,
       "logits traces: worst original rank that may be chosen (0: top_k+2)"},
      {"min-gate-mass", true, false, "logits traces: reroute a token only if it keeps this much"},
      {"hardware", true, false,
       "estimate ms per token on this link: pcie4-x16 | pcie5-x16 (README, \"Time per token\"); "
       "--expert-bytes is each load's size"},
      {"link-gbps", true, false, "with --hardware: the link's effective GB/s instead"},
      {"load-latency-us", true, false, "with --hardware: each load's fixed cost instead"},
      {"compute-us", true, false,
       "with --hardware: one layer's compute per decode step, your model's (default 200)"},
      {"compute-us-per-token", true, false,
       "with --hardware: one layer's compute per token where tokens bound it (prefill): a step "
       "takes the larger of that times its tokens and --compute-us (default 0)"},
      {"time-plot", true, false, "with --budgets and --hardware: ms per token against budget, SVG"},
  };
  return flags;
}

const std::vector<FlagSpec>& ReplayFlags() {
  static const std::vector<FlagSpec> flags = [] {
    std::vector<FlagSpec> all = LocalReplayFlags();
    all.push_back({"json", false, false, "print one JSON object instead of a table"});
    all.push_back(ModelFlag("with --server: the model to drive"));
    all.push_back(
        {"stream", false, false, "with --server: route over one RouteStream, not unary calls"});
    return WithServerFlags(all);
  }();
  return flags;
}

// replay --server: drives a running server with the trace.
int ReplayThroughServerCommand(const CommandLine& cl, const RoutingTrace& trace) {
  for (const FlagSpec& f : LocalReplayFlags()) {
    if (cl.Has(f.name)) {
      return CommandError("replay",
                          absl::InvalidArgumentError(absl::StrFormat(
                              "--%s is for local replay; with --server the server's "
                              "model sets budget, policy and routing",
                              f.name)),
                          2);
    }
  }
  auto client = ConnectToServer(cl);
  if (!client.ok()) return CommandError("replay", client.status());
  const std::string model = ModelName(cl);
  ProgressBar bar("replay", trace.Steps());
  auto report = ReplayThroughServer(**client, model, trace, cl.Has("stream"),
                                    [&](uint64_t done, uint64_t) { bar.Update(done); });
  bar.Finish();
  if (!report.ok()) return CommandError("replay", report.status());
  const ServerReplayReport& r = *report;
  const char* via = cl.Has("stream") ? "RouteStream" : "RouteTokens";
  if (cl.Has("json")) {
    const nlohmann::json out = {{"model", model},
                                {"via", via},
                                {"steps", r.steps},
                                {"accesses", r.accesses},
                                {"resident", r.resident},
                                {"hit_rate", r.HitRate()},
                                {"changed_tokens", r.changed_tokens},
                                {"gate_mass_mean", r.steps ? r.gate_mass_sum / r.steps : 0},
                                {"urgent_page_ins", r.urgent_page_ins},
                                {"prefetches", r.prefetches},
                                {"seconds", r.seconds}};
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%llu steps of %llu tokens through model %s via %s in %.2f s (%.0f steps/s)\n",
              static_cast<unsigned long long>(r.steps),
              static_cast<unsigned long long>(trace.Tokens()), model.c_str(), via, r.seconds,
              r.seconds > 0 ? r.steps / r.seconds : 0);
  std::printf(
      "hit rate %.3f (%llu of %llu chosen experts resident); rerouted %llu steps, "
      "gate mass mean %.4f; queued %llu urgent page-ins, %llu prefetches\n",
      r.HitRate(), static_cast<unsigned long long>(r.resident),
      static_cast<unsigned long long>(r.accesses),
      static_cast<unsigned long long>(r.changed_tokens), r.steps ? r.gate_mass_sum / r.steps : 0,
      static_cast<unsigned long long>(r.urgent_page_ins),
      static_cast<unsigned long long>(r.prefetches));
  return 0;
}

// --budgets: slots, or percentages of the model's experts (all layers).
absl::StatusOr<std::vector<uint64_t>> ParseBudgets(const std::string& list,
                                                   const RoutingTrace& trace) {
  const uint64_t experts = uint64_t{trace.num_layers} * trace.num_experts;
  std::vector<uint64_t> out;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    const bool percent = absl::ConsumeSuffix(&item, "%");
    double v = 0;
    if (!absl::SimpleAtod(item, &v) || !(v > 0) || (percent && v > 100)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--budgets: '%s' is not a slot count or a percentage in (0, 100]", item));
    }
    const uint64_t slots =
        percent ? static_cast<uint64_t>(std::ceil(v / 100 * experts)) : static_cast<uint64_t>(v);
    if (!percent && (v != std::floor(v) || slots > experts)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--budgets: %s slots: a whole number up to the trace's %d experts", item, experts));
    }
    out.push_back(slots);
  }
  return out;
}

// With --peers, a row set against the others of its budget: how far below
// belady it is, and how much of the best peer's distance to belady it
// closes (1: all of it; negative: it trails that peer).
struct PeerComparison {
  double to_belady = NAN;
  double gap_closed = NAN;
};

std::string FormatShare(double value) {
  return std::isnan(value) ? "-" : absl::StrFormat("%.3f", value);
}
std::string FormatShare(const nlohmann::json& value) {
  return value.is_number() ? FormatShare(value.get<double>()) : "-";
}

// The policy a fresh deployment evicts by, as the table and the JSON rows
// mark it.
bool IsDefaultPolicy(const std::string& policy) { return policy == kDefaultEvictionPolicy; }

std::string TablePolicyName(const std::string& policy) {
  return IsDefaultPolicy(policy) ? policy + "*" : policy;
}

void PrintDefaultFootnote(bool shown) {
  if (shown) std::printf("* the default: what a deployment evicts by unless its model names one\n");
}

PeerComparison CompareWithPeers(const ReplayReport& report, const ReplayRow& row) {
  std::optional<double> belady, best_peer;
  for (const ReplayRow& r : report.rows) {
    if (r.policy == kBeladyPolicyName) belady = r.hit_rate;
    if (IsPeerPolicy(r.policy) && r.refused.empty()) {
      best_peer = std::max(best_peer.value_or(0.0), r.hit_rate);
    }
  }
  PeerComparison out;
  if (belady) out.to_belady = *belady - row.hit_rate;
  if (belady && best_peer && *belady > *best_peer) {
    out.gap_closed = (row.hit_rate - *best_peer) / (*belady - *best_peer);
  }
  return out;
}

// Which optional columns a --budgets table has.
struct BudgetColumns {
  bool prefetch, peers, rerouted, timed;
};

// The --budgets rows as a table, refused rows saying why.
void PrintBudgetTable(const nlohmann::json& rows, const BudgetColumns& c) {
  std::printf("%-14s %12s %9s%s%s%s%s\n", "policy", "budget_slots", "hit_rate",
              c.prefetch ? " ready_rate" : "", c.timed ? "  ms/token" : "",
              c.rerouted ? " gate_mass" : "", c.peers ? " to_belady gap_closed" : "");
  for (const nlohmann::json& row : rows) {
    std::printf("%-14s %12llu", TablePolicyName(row["policy"].get<std::string>()).c_str(),
                static_cast<unsigned long long>(row["budget_slots"].get<uint64_t>()));
    if (row.contains("refused")) {
      std::printf(" refused: %s\n", row["refused"].get<std::string>().c_str());
      continue;
    }
    std::printf(" %9.3f", row["hit_rate"].get<double>());
    if (c.prefetch) std::printf(" %10.3f", row["ready_rate"].get<double>());
    if (c.timed) std::printf(" %9.3f", row["ms_per_token"].get<double>());
    if (c.rerouted) std::printf(" %9.4f", row["gate_mass"].get<double>());
    if (c.peers) {
      std::printf(" %9s %10s", FormatShare(row["to_belady"]).c_str(),
                  FormatShare(row["gap_closed"]).c_str());
    }
    std::printf("\n");
  }
  PrintDefaultFootnote(std::any_of(rows.begin(), rows.end(), [](const nlohmann::json& row) {
    return row["default"].get<bool>();
  }));
}

// Writes `plot` to the file `flag` names; 0, or the command's error code.
int WritePlot(const CommandLine& cl, const char* flag, const Plot& plot) {
  if (absl::Status s = WriteFileAtomically(cl.Value(flag), RenderSvg(plot)); !s.ok()) {
    return CommandError("replay", s);
  }
  std::fprintf(stderr, "replay: plot written to %s\n", cl.Value(flag).c_str());
  return 0;
}

// --time-plot: ms per token against budget, one series per policy.
Plot TimePlot(const HardwareProfile& hardware, bool prefetch, double x_max,
              const std::map<std::string, PlotSeries>& time) {
  Plot plot;
  plot.title = absl::StrFormat(
      "estimated ms per token on %s (%g GB/s, %g us a load, %g us compute a layer)%s",
      hardware.name, hardware.link_gb_per_s, hardware.load_latency_us,
      hardware.compute_us_per_layer, prefetch ? ", with prefetch" : "");
  plot.x_label = "budget (expert slots, all layers)";
  plot.y_label = "ms per token";
  plot.x_max = x_max;
  plot.y_max = 0;
  for (const auto& [name, s] : time) {
    plot.series.push_back(s);
    for (double y : s.y) plot.y_max = std::max(plot.y_max, y * 1.05);
  }
  return plot;
}

// --budgets: every policy at each budget, as a table or JSON, and a plot.
int ReplayBudgets(const CommandLine& cl, const RoutingTrace& trace, ReplayOptions options) {
  auto budgets = ParseBudgets(cl.Value("budgets"), trace);
  if (!budgets.ok()) return CommandError("replay", budgets.status(), 2);
  const bool prefetch = options.prefetch_budget > 0;
  const bool peers = cl.Has("peers");
  const bool rerouted = options.router.has_value();
  const bool timed = options.hardware.has_value();
  if (cl.Has("time-plot") && !timed) {
    return CommandError("replay", absl::InvalidArgumentError("--time-plot needs --hardware"), 2);
  }
  std::map<std::string, PlotSeries> hit, ready, time;
  nlohmann::json rows = nlohmann::json::array();
  ProgressBar bar("replay", budgets->size());
  for (size_t b = 0; b < budgets->size(); ++b) {
    options.amount = (*budgets)[b];
    auto report = Replay(trace, options);
    if (!report.ok()) return CommandError("replay", report.status());
    for (const ReplayRow& r : report->rows) {
      nlohmann::json row = {{"policy", r.policy},
                            {"default", IsDefaultPolicy(r.policy)},
                            {"budget_slots", options.amount}};
      if (!r.refused.empty()) {
        row["refused"] = r.refused;
        rows.push_back(row);
        continue;
      }
      row["hit_rate"] = r.hit_rate;
      if (timed) row["ms_per_token"] = prefetch ? r.ready_ms_per_token : r.ms_per_token;
      if (prefetch) row["ready_rate"] = r.ready_rate;
      if (rerouted) row["gate_mass"] = r.gate_mass_mean;
      if (peers) {
        const PeerComparison c = CompareWithPeers(*report, r);
        row["peer"] = IsPeerPolicy(r.policy);
        row["to_belady"] = c.to_belady;
        row["gap_closed"] = c.gap_closed;
      }
      rows.push_back(row);
      for (auto [series, value, suffix] :
           {std::tuple{&hit, r.hit_rate, ""}, std::tuple{&ready, r.ready_rate, " ready"},
            std::tuple{&time, prefetch ? r.ready_ms_per_token : r.ms_per_token, ""}}) {
        PlotSeries& s = (*series)[r.policy];
        s.name = r.policy + suffix;
        s.dashed = IsPeerPolicy(r.policy);
        s.x.push_back(static_cast<double>(options.amount));
        s.y.push_back(value);
      }
    }
    bar.Update(b + 1);
  }
  bar.Finish();
  if (cl.Has("json")) {
    std::printf("%s\n", nlohmann::json{{"rows", rows}}.dump(2).c_str());
  } else {
    PrintBudgetTable(rows, {prefetch, peers, rerouted, timed});
  }
  if (cl.Has("plot")) {
    Plot plot;
    plot.title = absl::StrFormat("hit rate against budget (%d experts in all)",
                                 uint64_t{trace.num_layers} * trace.num_experts);
    plot.x_label = "budget (expert slots, all layers)";
    plot.y_label = prefetch ? "hit rate, and ready rate with prefetch" : "hit rate";
    plot.x_max = static_cast<double>(*std::max_element(budgets->begin(), budgets->end()));
    for (auto& [name, s] : hit) plot.series.push_back(s);
    if (prefetch) {
      for (auto& [name, s] : ready) plot.series.push_back(s);
    }
    if (int code = WritePlot(cl, "plot", plot); code != 0) return code;
  }
  if (cl.Has("time-plot")) {
    const double x_max = static_cast<double>(*std::max_element(budgets->begin(), budgets->end()));
    return WritePlot(cl, "time-plot", TimePlot(*options.hardware, prefetch, x_max, time));
  }
  return 0;
}

// --batch B into `options`.
absl::Status ParseBatch(const CommandLine& cl, ReplayOptions& options) {
  if (!cl.Has("batch")) return absl::OkStatus();
  auto batch = cl.Count("batch", 0);
  if (!batch.ok()) return batch.status();
  if (*batch == 0 || *batch > 4096) {
    return absl::InvalidArgumentError("--batch must be in [1, 4096]");
  }
  if (cl.Has("as-one-run")) {
    return absl::InvalidArgumentError("--batch already plays the runs through one cache");
  }
  options.batch = static_cast<uint32_t>(*batch);
  return absl::OkStatus();
}

// --hardware and the flags that tune it into `options`.
absl::Status ParseHardware(const CommandLine& cl, ReplayOptions& options) {
  for (const char* flag :
       {"link-gbps", "load-latency-us", "compute-us", "compute-us-per-token", "time-plot"}) {
    if (cl.Has(flag) && !cl.Has("hardware")) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs --hardware"));
    }
  }
  if (!cl.Has("hardware")) return absl::OkStatus();
  auto hardware = HardwarePreset(cl.Value("hardware"));
  if (!hardware.ok()) return hardware.status();
  for (auto [flag, field] :
       {std::pair{"link-gbps", &HardwareProfile::link_gb_per_s},
        std::pair{"load-latency-us", &HardwareProfile::load_latency_us},
        std::pair{"compute-us", &HardwareProfile::compute_us_per_layer},
        std::pair{"compute-us-per-token", &HardwareProfile::compute_us_per_token}}) {
    auto value = cl.Number(flag, (*hardware).*field);
    if (!value.ok()) return value.status();
    (*hardware).*field = *value;
  }
  if (absl::Status s = hardware->Validate(); !s.ok()) return s;
  options.hardware = *hardware;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ReplayOptions> ParseReplayOptions(const CommandLine& cl, const RoutingTrace& trace) {
  ReplayOptions options;
  int modes = 0;
  for (const auto& [flag, mode] : {std::pair{"per-layer", BudgetMode::kPerLayer},
                                   std::pair{"global-slots", BudgetMode::kGlobalSlots},
                                   std::pair{"global-bytes", BudgetMode::kGlobalBytes}}) {
    if (!cl.Has(flag)) continue;
    ++modes;
    options.mode = mode;
    auto amount = cl.Count(flag, 0);
    if (!amount.ok()) return amount.status();
    options.amount = *amount;
  }
  if (cl.Has("budgets")) {
    if (modes != 0) return absl::InvalidArgumentError("--budgets replaces the single budget flags");
    options.mode = BudgetMode::kGlobalSlots;  // each budget's amount is set per replay
  } else if (modes != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of --per-layer C, --global-slots S, --global-bytes B or --budgets LIST");
  }
  auto expert_bytes = cl.Count("expert-bytes", 1 << 20);
  auto prefetch = cl.Count("prefetch-budget", 0);
  if (!expert_bytes.ok()) return expert_bytes.status();
  if (!prefetch.ok()) return prefetch.status();
  options.expert_bytes = *expert_bytes;
  options.prefetch_budget = static_cast<uint32_t>(*prefetch);
  if (absl::Status s = ParseBatch(cl, options); !s.ok()) return s;
  if (absl::Status s = ParseHardware(cl, options); !s.ok()) return s;
  auto threads = cl.Count("threads", std::max(1u, std::thread::hardware_concurrency()));
  if (!threads.ok()) return threads.status();
  if (*threads == 0) return absl::InvalidArgumentError("--threads must be at least 1");
  options.threads = static_cast<uint32_t>(std::min<uint64_t>(*threads, 256));
  std::vector<std::string> policies = cl.Values("policy");
  for (const std::string& p : policies) {
    if (absl::Status s = CheckReplayPolicyName(p); !s.ok()) return s;
  }
  if (policies.empty()) {
    for (const std::string& p : ReplayPolicyNames()) {
      if (!IsPeerPolicy(p)) policies.push_back(p);
    }
  }
  if (cl.Has("peers")) {
    for (const std::string& p : PeerPolicyNames()) {
      if (std::find(policies.begin(), policies.end(), p) == policies.end()) policies.push_back(p);
    }
  }
  // The reference rows come first.
  const std::vector<std::string> references = ReferencePolicyNames();
  for (auto it = references.rbegin(); it != references.rend(); ++it) {
    if (std::find(policies.begin(), policies.end(), *it) == policies.end()) {
      policies.insert(policies.begin(), *it);
    }
  }
  options.policies = policies;
  if (cl.Has("bonus") || cl.Has("protected-top") || cl.Has("max-rank") || cl.Has("min-gate-mass")) {
    RouterConfig router;
    router.num_experts = trace.num_experts;
    router.top_k = trace.top_k;
    router.rule = trace.rule;
    auto bonus = cl.Number("bonus", router.cache_bonus);
    auto protect = cl.Count("protected-top", router.protected_top);
    auto rank = cl.Count("max-rank", router.max_rank);
    auto mass = cl.Number("min-gate-mass", router.min_gate_mass);
    for (const absl::Status& s : {bonus.status(), protect.status(), rank.status(), mass.status()}) {
      if (!s.ok()) return s;
    }
    router.cache_bonus = *bonus;
    router.protected_top = static_cast<uint32_t>(*protect);
    router.max_rank = static_cast<uint32_t>(*rank);
    router.min_gate_mass = *mass;
    options.router = router;
  }
  return options;
}

void PrintReplayTable(const ReplayReport& report, const ReplayOptions& options, bool peers) {
  const bool timed = options.hardware.has_value();
  std::printf("%-14s %9s %10s %11s %13s %10s", "policy", "hit_rate", "ready_rate", "loads/token",
              "prefetch_used", "accesses");
  if (timed) std::printf(" %9s %9s", "ms/token", "ready_ms");
  if (options.router) std::printf(" %8s %9s", "changed", "gate_mass");
  if (peers) std::printf(" %9s %10s", "to_belady", "gap_closed");
  std::printf("\n");
  for (const ReplayRow& r : report.rows) {
    if (!r.refused.empty()) {
      std::printf("%-14s refused: %s\n", TablePolicyName(r.policy).c_str(), r.refused.c_str());
      continue;
    }
    std::printf("%-14s %9.3f %10.3f %11.3f %13llu %10llu", TablePolicyName(r.policy).c_str(),
                r.hit_rate, r.ready_rate, r.loads_per_token,
                static_cast<unsigned long long>(r.prefetch_used),
                static_cast<unsigned long long>(r.accesses));
    if (timed) std::printf(" %9.3f %9.3f", r.ms_per_token, r.ready_ms_per_token);
    if (options.router) std::printf(" %8.3f %9.4f", r.changed_fraction, r.gate_mass_mean);
    if (peers) {
      const PeerComparison c = CompareWithPeers(report, r);
      std::printf(" %9s %10s", FormatShare(c.to_belady).c_str(), FormatShare(c.gap_closed).c_str());
    }
    std::printf("\n");
  }
  PrintDefaultFootnote(std::any_of(report.rows.begin(), report.rows.end(),
                                   [](const ReplayRow& r) { return IsDefaultPolicy(r.policy); }));
}

nlohmann::json ReplayJson(const ReplayReport& report, bool peers) {
  nlohmann::json rows = nlohmann::json::array();
  for (const ReplayRow& r : report.rows) {
    nlohmann::json& row = rows.emplace_back();
    if (!r.refused.empty()) {
      row = {{"policy", r.policy}, {"default", IsDefaultPolicy(r.policy)}, {"refused", r.refused}};
      continue;
    }
    if (peers) {
      const PeerComparison c = CompareWithPeers(report, r);
      row["peer"] = IsPeerPolicy(r.policy);
      row["to_belady"] = c.to_belady;
      row["gap_closed"] = c.gap_closed;
    }
    row.update({{"policy", r.policy},
                {"default", IsDefaultPolicy(r.policy)},
                {"hit_rate", r.hit_rate},
                {"ready_rate", r.ready_rate},
                {"loads_per_token", r.loads_per_token},
                {"demand_loads_per_token", r.demand_loads_per_token},
                {"prefetch_loads", r.prefetch_loads},
                {"prefetch_used", r.prefetch_used},
                {"accesses", r.accesses},
                {"tokens", r.tokens},
                {"changed_fraction", r.changed_fraction},
                {"gate_mass_mean", r.gate_mass_mean},
                {"gate_mass_min", r.gate_mass_min}});
    if (r.ms_per_token > 0) {
      row["ms_per_token"] = r.ms_per_token;
      row["ready_ms_per_token"] = r.ready_ms_per_token;
    }
  }
  return {{"tokens", report.tokens}, {"accesses", report.accesses}, {"rows", rows}};
}

int ReplayCommand(const std::vector<std::string>& args) {
  auto cl = CommandLine::Parse(args, ReplayFlags());
  if (!cl.ok() || cl->positional().size() != 1) {
    return CommandUsage("replay",
                        "TRACE (--per-layer C | --global-slots S | --global-bytes B) [flags]\n"
                        "       moe-router replay --server ADDR TRACE [--model M] [--stream]",
                        cl.status(), ReplayFlags());
  }
  auto trace = ReadTrace(cl->positional()[0]);
  if (!trace.ok()) return CommandError("replay", trace.status());
  if (cl->Has("server")) return ReplayThroughServerCommand(*cl, *trace);
  if (cl->Has("as-one-run")) *trace = Concatenated(*trace);
  auto options = ParseReplayOptions(*cl, *trace);
  if (!options.ok()) return CommandError("replay", options.status(), 2);
  if (cl->Has("budgets")) return ReplayBudgets(*cl, *trace, *std::move(options));
  if (cl->Has("plot"))
    return CommandError("replay", absl::InvalidArgumentError("--plot needs --budgets"), 2);
  ProgressBar bar("replay", 1);
  auto report = Replay(*trace, *options, [&](uint64_t done, uint64_t total) {
    if (done == 1) bar = ProgressBar("replay", total);
    bar.Update(done);
  });
  bar.Finish();
  if (!report.ok()) return CommandError("replay", report.status());
  if (cl->Has("json")) {
    std::printf("%s\n", ReplayJson(*report, cl->Has("peers")).dump(2).c_str());
  } else {
    PrintReplayTable(*report, *options, cl->Has("peers"));
  }
  return 0;
}

}  // namespace moe_router
