// moe-router trace stats TRACE [--json]: the statistics that decide whether
// offloading experts pays for a model, per layer and over all layers.
// moe-router trace import FORMAT INPUT... -o OUT: the routing vLLM, SGLang or
// Transformers recorded, as our routing JSONL or logits trace.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "core/store/safetensors_store.h"
#include "eval/trace.h"
#include "eval/trace_import.h"
#include "nlohmann/json.hpp"
#include "proto/proto_to_core.h"

namespace moe_router {
namespace {

const std::vector<FlagSpec>& TraceFlags() {
  static const std::vector<FlagSpec> flags = {
      {"json", false, false, "print one JSON object"},
  };
  return flags;
}

// The tokens the trace marks as its runs' prompts.
uint64_t PromptTokens(const RoutingTrace& trace) {
  uint64_t n = 0;
  for (const RoutingTrace::Run& run : trace.runs) n += run.prompt_tokens;
  return n;
}

void PrintStats(const std::string& path, const RoutingTrace& trace, const TraceStats& s) {
  const uint32_t tenth =
      std::max<uint32_t>(1, (trace.num_experts + 9) / 10);  // as ComputeTraceStats
  std::printf("%s: %zu runs, %llu tokens (%llu marked prompt), %u layers x %u experts, top-%u\n",
              path.c_str(), trace.runs.size(), static_cast<unsigned long long>(trace.Tokens()),
              static_cast<unsigned long long>(PromptTokens(trace)), trace.num_layers,
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
                              {"prompt_tokens", PromptTokens(*trace)},
                              {"num_layers", trace->num_layers},
                              {"num_experts", trace->num_experts},
                              {"top_k", trace->top_k},
                              {"reuse_mean", s.reuse_mean},
                              {"busiest_share_mean", s.busiest_share_mean},
                              {"top_tenth_share_mean", s.top_tenth_share_mean},
                              {"reuse_by_layer", s.reuse_by_layer},
                              {"busiest_share_by_layer", s.busiest_share_by_layer},
                              {"top_tenth_share_by_layer", s.top_tenth_share_by_layer}};
  // The path need not be UTF-8; dump() would throw on it.
  std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}

const std::vector<FlagSpec>& ImportFlags() {
  static const std::vector<FlagSpec> flags = {
      {"output", true, false, "the trace to write (required)", 'o'},
      {"num-layers", true, false,
       "the input's layer count, dense layers included (sglang: shapes the flat ids)"},
      {"top-k", true, false, "experts per token (required for sglang's flat ids and for hf)"},
      {"num-experts", true, false, "the model's experts per layer (default: largest id + 1)"},
      {"first-moe-layer", true, false, "input layers below it are dense and dropped (default 0)"},
      {"dense-layers", true, false,
       "auto (default): drop layers that are all 0/-1 in every request; none: keep every layer"},
      {"tokens", true, false,
       "all (default), prompt or generated: which of a request's tokens to import"},
      {"rule", true, false,
       "hf: the model's routing rule, which makes each step's experts from its logits "
       "(mixtral by default; deepseek_v3, glm4_moe, ...)"},
      {"bias-checkpoint", true, false,
       "hf, a rule with a choice bias: the safetensors checkpoint holding each layer's bias"},
      {"bias-tensor", true, false,
       "the bias tensor's name with {layer} (default "
       "model.layers.{layer}.mlp.gate.e_score_correction_bias)"},
  };
  return flags;
}

constexpr char kImportSynopsis[] = "vllm|sglang|hf INPUT... -o OUT [flags]";

absl::StatusOr<ImportOptions> ParseImportOptions(const CommandLine& cl) {
  ImportOptions o;
  for (auto [name, out] : {std::pair{"num-layers", &o.num_layers}, std::pair{"top-k", &o.top_k},
                           std::pair{"num-experts", &o.num_experts},
                           std::pair{"first-moe-layer", &o.first_moe_layer}}) {
    absl::StatusOr<uint64_t> v = cl.Count(name, 0);
    if (!v.ok()) return v.status();
    if (*v > std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrFormat("--%s %d is too large", name, *v));
    }
    *out = static_cast<uint32_t>(*v);
  }
  const std::string dense = cl.Value("dense-layers", "auto");
  if (dense != "auto" && dense != "none") {
    return absl::InvalidArgumentError(
        absl::StrFormat("--dense-layers is auto or none, not '%s'", dense));
  }
  o.drop_empty_layers = dense == "auto";
  if (cl.Has("rule")) {
    absl::StatusOr<RoutingRule> rule = RoutingRulePreset(cl.Value("rule"));
    if (!rule.ok()) return rule.status();
    o.rule = *rule;
  }
  const std::string tokens = cl.Value("tokens", "all");
  if (tokens == "prompt") {
    o.tokens = ImportOptions::Tokens::kPrompt;
  } else if (tokens == "generated") {
    o.tokens = ImportOptions::Tokens::kGenerated;
  } else if (tokens != "all") {
    return absl::InvalidArgumentError(
        absl::StrFormat("--tokens is all, prompt or generated, not '%s'", tokens));
  }
  return o;
}

// Every input read by `read`, with a progress bar over their bytes; `read`
// may report its progress within a file.
template <typename Request, typename Read>
absl::StatusOr<std::vector<Request>> ReadInputs(const std::vector<std::string>& inputs, Read read) {
  uint64_t total = 0;
  std::error_code ignored;  // a missing file is reported by its reader
  for (const std::string& path : inputs) total += std::filesystem::file_size(path, ignored);
  ProgressBar bar("import", std::max<uint64_t>(total, 1));
  std::vector<Request> out;
  uint64_t done = 0;
  for (const std::string& path : inputs) {
    absl::StatusOr<std::vector<Request>> requests =
        read(path, [&](uint64_t in_file) { bar.Update(done + in_file); });
    if (!requests.ok()) return requests.status();
    for (Request& r : *requests) out.push_back(std::move(r));
    done += std::filesystem::file_size(path, ignored);
    bar.Update(done);
  }
  bar.Finish();
  return out;
}

absl::StatusOr<ImportedTrace> Import(const std::string& format,
                                     const std::vector<std::string>& inputs, ImportOptions options,
                                     const CommandLine& cl) {
  if (format == "vllm" || format == "sglang") {
    auto requests = ReadInputs<RoutedRequest>(
        inputs, [&](const std::string& path, const std::function<void(uint64_t)>& progress) {
          return format == "vllm" ? ReadVllmRouting(path, options)
                                  : ReadSglangRouting(path, options, progress);
        });
    if (!requests.ok()) return requests.status();
    return BuildRoutedTrace(*requests, options);
  }
  if (format == "hf") {
    auto requests = ReadInputs<LogitsRequest>(
        inputs, [&](const std::string& path, const std::function<void(uint64_t)>&) {
          return ReadTransformersLogits(path, options);
        });
    if (!requests.ok()) return requests.status();
    if (options.rule.choice_bias && !requests->empty()) {
      // The dump's every layer, as the checkpoint numbers them (MoE
      // layers' experts under model.layers.{layer}.mlp.experts.{expert}.).
      if (!cl.Has("bias-checkpoint")) {
        return absl::InvalidArgumentError(
            "--rule chooses with a bias per (layer, expert): give --bias-checkpoint DIR");
      }
      auto bias = SafetensorsStore::ReadLayerVectors(
          {.directory = cl.Value("bias-checkpoint"), .expert_pattern = kQwenMoeExpertPattern},
          cl.Value("bias-tensor", kDefaultBiasTensor), requests->front().layers,
          requests->front().num_experts);
      if (!bias.ok()) return bias.status();
      options.choice_bias = *std::move(bias);
    }
    return BuildLogitsTrace(*requests, options);
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown format '%s': vllm, sglang or hf", format));
}

int ImportCommandOfTrace(const std::vector<std::string>& args) {
  auto cl = CommandLine::Parse(args, ImportFlags());
  if (!cl.ok() || cl->positional().size() < 2 || !cl->Has("output")) {
    return CommandUsage("trace import", kImportSynopsis, cl.status(), ImportFlags());
  }
  absl::StatusOr<ImportOptions> options = ParseImportOptions(*cl);
  if (!options.ok()) return CommandError("trace import", options.status(), 2);
  const std::string format = cl->positional()[0], output = cl->Value("output");
  const std::vector<std::string> inputs(cl->positional().begin() + 1, cl->positional().end());
  const absl::Time start = absl::Now();
  absl::StatusOr<ImportedTrace> imported = Import(format, inputs, *options, *cl);
  if (!imported.ok()) return CommandError("trace import", imported.status());
  const absl::Time read = absl::Now();
  const RoutingTrace& trace = imported->trace;
  const absl::Status written =
      trace.has_logits() ? WriteLogitsTrace(output, trace) : WriteRoutingJsonl(output, *imported);
  if (!written.ok()) return CommandError("trace import", written);
  std::fprintf(stderr,
               "wrote %s: %zu runs, %llu tokens, %llu steps; %u MoE layers (input layers %u to "
               "%u of %u) x %u experts, top-%u%s; read and checked in %.2f s, written in %.2f s\n",
               output.c_str(), trace.runs.size(), static_cast<unsigned long long>(trace.Tokens()),
               static_cast<unsigned long long>(trace.Steps()), trace.num_layers,
               imported->source_layers.front(), imported->source_layers.back(),
               imported->dump_layers, trace.num_experts, trace.top_k,
               trace.has_logits() ? ", with logits" : "", absl::ToDoubleSeconds(read - start),
               absl::ToDoubleSeconds(absl::Now() - read));
  for (const std::string& note : imported->notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  return 0;
}

}  // namespace

int TraceCommand(const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "stats")
    return StatsCommandOfTrace({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "import") {
    return ImportCommandOfTrace({args.begin() + 1, args.end()});
  }
  const bool help = !args.empty() && (args[0] == "--help" || args[0] == "-h");
  std::fprintf(help ? stdout : stderr,
               "usage: moe-router trace stats TRACE [--json]\n"
               "       moe-router trace import %s\n"
               "  stats:  reuse between consecutive tokens, the busiest expert's share and the\n"
               "          most used tenth's share, per layer\n"
               "  import: the routing vLLM (.npy/.npz), SGLang (responses JSONL) or Transformers\n"
               "          (router logits .npy/.npz) recorded, as a routing JSONL or logits trace\n",
               kImportSynopsis);
  return help ? 0 : 2;
}

}  // namespace moe_router
