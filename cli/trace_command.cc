// moe-router trace stats TRACE [--json]: the statistics that decide whether
// offloading experts pays for a model, per layer and over all layers.
#include <algorithm>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "eval/trace.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace {

const std::vector<FlagSpec>& TraceFlags() {
  static const std::vector<FlagSpec> flags = {
      {"json", false, false, "print one JSON object"},
  };
  return flags;
}

void PrintStats(const std::string& path, const RoutingTrace& trace, const TraceStats& s) {
  const uint32_t tenth =
      std::max<uint32_t>(1, (trace.num_experts + 9) / 10);  // as ComputeTraceStats
  std::printf("%s: %zu runs, %llu tokens, %u layers x %u experts, top-%u\n", path.c_str(),
              trace.runs.size(), static_cast<unsigned long long>(trace.Tokens()), trace.num_layers,
              trace.num_experts, trace.top_k);
  std::printf(
      "reuse: the share of a token's experts the previous token at its layer used too (what a\n"
      "  cache of one token's experts would hit); busiest: the busiest expert's share of its\n"
      "  layer's accesses (uniform: 1/%u = %.3f); top tenth: the share the most used tenth of the\n"
      "  experts (%u of them) take (uniform: %.3f)\n\n",
      trace.num_experts, 1.0 / trace.num_experts, tenth,
      static_cast<double>(tenth) / trace.num_experts);
  std::printf("%6s %8s %8s %10s\n", "layer", "reuse", "busiest", "top tenth");
  for (uint32_t l = 0; l < trace.num_layers; ++l) {
    std::printf("%6u %8.3f %8.3f %10.3f\n", l, s.reuse_by_layer[l], s.busiest_share_by_layer[l],
                s.top_tenth_share_by_layer[l]);
  }
  std::printf("%6s %8.3f %8.3f %10.3f\n", "mean", s.reuse_mean, s.busiest_share_mean,
              s.top_tenth_share_mean);
}

int StatsCommandOfTrace(const std::vector<std::string>& args) {
  auto cl = CommandLine::Parse(args, TraceFlags());
  if (!cl.ok() || cl->positional().size() != 1) {
    return CommandUsage("trace stats", "TRACE [--json]", cl.status(), TraceFlags());
  }
  const std::string path = cl->positional()[0];
  auto trace = ReadTrace(path);
  if (!trace.ok()) return CommandError("trace stats", trace.status());
  const TraceStats s = ComputeTraceStats(*trace);
  if (!cl->Has("json")) {
    PrintStats(path, *trace, s);
    return 0;
  }
  const nlohmann::json out = {{"trace", path},
                              {"runs", trace->runs.size()},
                              {"tokens", trace->Tokens()},
                              {"num_layers", trace->num_layers},
                              {"num_experts", trace->num_experts},
                              {"top_k", trace->top_k},
                              {"reuse_mean", s.reuse_mean},
                              {"busiest_share_mean", s.busiest_share_mean},
                              {"top_tenth_share_mean", s.top_tenth_share_mean},
                              {"reuse_by_layer", s.reuse_by_layer},
                              {"busiest_share_by_layer", s.busiest_share_by_layer},
                              {"top_tenth_share_by_layer", s.top_tenth_share_by_layer}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

}  // namespace

int TraceCommand(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "stats") {
    std::fprintf(args.empty() || args[0] == "--help" ? stdout : stderr,
                 "usage: moe-router trace stats TRACE [--json]\n"
                 "  stats: reuse between consecutive tokens, the busiest expert's share and the\n"
                 "         most used tenth's share, per layer\n");
    return !args.empty() && args[0] == "--help" ? 0 : 2;
  }
  return StatsCommandOfTrace({args.begin() + 1, args.end()});
}

}  // namespace moe_router
