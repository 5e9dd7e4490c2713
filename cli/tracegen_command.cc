// moe-router tracegen --preset P --out FILE [--rule R] [--sequences S]
//   [--tokens T] [--seed N] [--compare REAL.jsonl] [generator overrides]
#include <cstdio>

#include "absl/strings/str_format.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "eval/calibration.h"
#include "eval/workload.h"

namespace moe_router {
namespace {

const std::vector<FlagSpec>& TracegenFlags() {
  static const std::vector<FlagSpec> flags = {
      {"preset", true, false,
       "mixtral | qwen3-30b-a3b | qwen3-235b-a22b | gpt-oss-120b | deepseek-v3 | kimi-k2 | glm-4.5 "
       "| llama4-maverick (default mixtral)"},
      {"rule", true, false,
       "route by this rule instead of the preset's (mixtral, deepseek_v3, ...: routing_rule.h)"},
      {"out", true, false, "logits trace to write"},
      {"sequences", true, false, "sequences (runs) to generate (preset default)"},
      {"tokens", true, false, "tokens per sequence (preset default)"},
      {"seed", true, false, "random seed (default 1)"},
      {"layers", true, false, "override the preset's MoE layers"},
      {"experts", true, false, "override the preset's experts per layer"},
      {"top-k", true, false, "override the preset's top_k"},
      {"skew", true, false, "generator: per-layer preference spread"},
      {"topic", true, false, "generator: per-sequence topic spread"},
      {"persistence", true, false, "generator: topic AR(1) coefficient across tokens"},
      {"noise", true, false, "generator: per-token noise"},
      {"layer-variation", true, false, "generator: how much layers differ"},
      {"compare", true, false, "a real routing trace to compare the generated one with"},
  };
  return flags;
}

}  // namespace

int TracegenCommand(const std::vector<std::string>& args) {
  auto cl = CommandLine::Parse(args, TracegenFlags());
  if (!cl.ok() || !cl->positional().empty() || (!cl->Has("out") && !cl->Has("compare"))) {
    return CommandUsage("tracegen", "[--out FILE] [--compare REAL] [flags]", cl.status(),
                        TracegenFlags());
  }
  auto preset = GetWorkloadPreset(cl->Value("preset", "mixtral"));
  if (!preset.ok()) return CommandError("tracegen", preset.status(), 2);
  WorkloadShape& shape = preset->shape;
  std::vector<absl::Status> errors;
  const auto count = [&](const char* flag, uint32_t& field) {
    auto v = cl->Count(flag, field);
    if (v.ok())
      field = static_cast<uint32_t>(*v);
    else
      errors.push_back(v.status());
  };
  const auto number = [&](const char* flag, double& field) {
    auto v = cl->Number(flag, field);
    if (v.ok())
      field = *v;
    else
      errors.push_back(v.status());
  };
  if (cl->Has("rule")) {
    auto rule = RoutingRulePreset(cl->Value("rule"));
    if (rule.ok()) {
      shape.rule = *rule;
    } else {
      errors.push_back(rule.status());
    }
  }
  count("layers", shape.num_layers);
  count("experts", shape.num_experts);
  count("top-k", shape.top_k);
  count("sequences", preset->sequences);
  count("tokens", preset->tokens);
  number("skew", shape.skew);
  number("topic", shape.topic);
  number("persistence", shape.persistence);
  number("noise", shape.noise);
  number("layer-variation", shape.layer_variation);
  auto seed = cl->Count("seed", 1);
  if (!seed.ok()) errors.push_back(seed.status());
  if (absl::Status s = shape.Validate(); !s.ok()) errors.push_back(s);
  if (!errors.empty()) return CommandError("tracegen", errors.front(), 2);

  ProgressBar bar("tracegen", uint64_t{preset->sequences} * preset->tokens);
  RoutingTrace trace = GenerateTrace(shape, preset->sequences, preset->tokens, *seed,
                                     [&](uint64_t done, uint64_t) { bar.Update(done); });
  bar.Finish();
  if (cl->Has("out")) {
    if (absl::Status s = WriteLogitsTrace(cl->Value("out"), trace); !s.ok())
      return CommandError("tracegen", s);
    std::fprintf(
        stderr,
        "wrote %s: %d sequences x %d tokens, %d layers x %d experts, top-%d, routed by %s\n",
        cl->Value("out").c_str(), preset->sequences, preset->tokens, shape.num_layers,
        shape.num_experts, shape.top_k, DescribeRoutingRule(shape.rule).c_str());
  }
  if (cl->Has("compare")) {
    auto real = ReadTrace(cl->Value("compare"));
    if (!real.ok()) return CommandError("tracegen", real.status());
    auto rows = CompareTraces(trace, *real);
    if (!rows.ok()) return CommandError("tracegen", rows.status());
    std::printf("%-40s %9s %9s %9s %s\n", "metric", "generated", "real", "tolerance", "");
    bool all_ok = true;
    for (const CalibrationRow& r : *rows) {
      std::printf("%-40s %9.3f %9.3f %9.3f %s\n", r.metric.c_str(), r.generated, r.real,
                  r.tolerance, r.ok() ? "ok" : "OFF");
      all_ok &= r.ok();
    }
    return all_ok ? 0 : 1;
  }
  return 0;
}

}  // namespace moe_router
