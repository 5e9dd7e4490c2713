// The moe-router CLI's commands that call a running moe-routerd.
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/server_connection.h"
#include "client/client.h"
#include "core/base/file_io.h"
#include "core/engine/model_footprint.h"
#include "core/store/safetensors.h"

namespace moe_router {
namespace {}  // namespace

int ModelsCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({});
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || !cl->positional().empty())
    return CommandUsage("models", "[--server ADDR]", cl.status(), flags);
  auto client = ConnectToServer(*cl);
  auto models = client.ok() ? (*client)->ListModels() : client.status();
  if (!models.ok()) return CommandError("models", models.status());
  std::printf("%-20s %7s %8s %6s %14s %10s %-12s %s\n", "model", "layers", "experts", "top_k",
              "budget_bytes", "memory", "policy", "store");
  for (const v1::ModelInfo& m : *models) {
    const v1::ModelSpec& s = m.spec();
    std::printf("%-20s %7u %8u %6u %14llu %10s %-12s %s\n", s.name().c_str(), s.num_layers(),
                s.num_experts(), s.top_k(), static_cast<unsigned long long>(s.budget_bytes()),
                FormatBytes(m.memory_bytes()).c_str(),
                s.eviction_policy().empty() ? "layer_reuse" : s.eviction_policy().c_str(),
                m.store().c_str());
  }
  return 0;
}

int RegisterCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({});
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || cl->positional().size() != 1) {
    return CommandUsage("register", "FILE.json [--server ADDR]", cl.status(), flags);
  }
  auto text = ReadFile(cl->positional()[0]);
  if (!text.ok()) return CommandError("register", text.status());
  // A file holds one ModelSpec, or a server config {"models": [...]}.
  v1::ServerConfig config;
  if (!google::protobuf::util::JsonStringToMessage(*text, &config).ok() ||
      config.models_size() == 0) {
    const auto parsed = google::protobuf::util::JsonStringToMessage(*text, config.add_models());
    if (!parsed.ok()) {
      return CommandError("register", absl::InvalidArgumentError(absl::StrFormat(
                                          "%s: %s", cl->positional()[0], parsed.ToString())));
    }
  }
  auto client = ConnectToServer(*cl);
  if (!client.ok()) return CommandError("register", client.status());
  for (const v1::ModelSpec& spec : config.models()) {
    auto info = (*client)->Register(spec);
    if (!info.ok()) return CommandError("register", info.status());
    // Through a proxy this is one replica of several: name it.
    const std::string where =
        info->replica().empty() ? "" : absl::StrFormat(" on replica '%s'", info->replica());
    std::printf("%s: %s%s (%s)\n", spec.name().c_str(),
                info->created() ? "registered" : "already registered", where.c_str(),
                info->store().c_str());
  }
  return 0;
}

int RouteCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({
      ModelFlag("model name"),
      {"layer", true, false, "layer (default 0)"},
      {"logits", true, false, "file of tokens x experts numbers (whitespace or commas)"},
      {"tokens", true, false, "route this many tokens of random logits instead (default 4)"},
      {"seed", true, false, "seed of the random logits (default 1)"},
  });
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || !cl->positional().empty())
    return CommandUsage("route", "[flags]", cl.status(), flags);
  auto layer = cl->Count("layer", 0);
  auto tokens = cl->Count("tokens", 4);
  auto seed = cl->Count("seed", 1);
  for (const absl::Status& s : {layer.status(), tokens.status(), seed.status()}) {
    if (!s.ok()) return CommandUsage("route", "[flags]", s, flags);
  }
  auto client = ConnectToServer(*cl);
  if (!client.ok()) return CommandError("route", client.status());
  const std::string model = ModelName(*cl);
  std::vector<float> logits;
  if (cl->Has("logits")) {
    auto text = ReadFile(cl->Value("logits"));
    if (!text.ok()) return CommandError("route", text.status());
    for (absl::string_view part :
         absl::StrSplit(*text, absl::ByAnyChar(" \t\n\r,"), absl::SkipEmpty())) {
      float x;
      if (!absl::SimpleAtof(part, &x)) {
        return CommandError("route", absl::InvalidArgumentError(absl::StrFormat(
                                         "%s: '%s' is not a number", cl->Value("logits"), part)));
      }
      logits.push_back(x);
    }
  } else {
    // Random logits need the model's width.
    auto spec = (*client)->FindModel(model);
    if (!spec.ok()) return CommandError("route", spec.status());
    const uint32_t experts = spec->num_experts();
    std::mt19937_64 rng(*seed);
    std::normal_distribution<float> noise(0.0f, 2.0f);
    logits.resize(*tokens * experts);
    for (float& x : logits) x = noise(rng);
  }
  auto routed = (*client)->Route(model, static_cast<uint32_t>(*layer), logits);
  if (!routed.ok()) return CommandError("route", routed.status());
  const uint32_t k = routed->tokens() ? routed->experts_size() / routed->tokens() : 0;
  std::printf("%5s  %s\n", "token", "experts (weight, resident)");
  for (uint32_t t = 0; t < routed->tokens(); ++t) {
    std::printf("%5u ", t);
    for (uint32_t i = 0; i < k; ++i) {
      const int j = static_cast<int>(t * k + i);
      std::printf(" %3u (%.3f%s)", routed->experts(j), routed->weights(j),
                  routed->resident(j) ? ", resident" : "");
    }
    std::printf("\n");
  }
  std::printf(
      "rerouted %u of %u tokens, gate mass retained %.4f; queued %d page-ins, %d prefetches\n",
      routed->changed_tokens(), routed->tokens(), routed->gate_mass_retained(),
      routed->urgent_page_ins_size(), routed->prefetches_size());
  return 0;
}

int PrefetchCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({
      ModelFlag(),
      {"layer", true, false, "layer (default 0)"},
      {"experts", true, false, "comma-separated experts to prefetch"},
      {"budget", true, false, "without --experts: let the server choose this many (default 4)"},
  });
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || !cl->positional().empty()) {
    return CommandUsage("prefetch", "[--experts E,E,... | --budget N] [flags]", cl.status(), flags);
  }
  auto layer = cl->Count("layer", 0);
  auto budget = cl->Count("budget", cl->Has("experts") ? 0 : 4);
  for (const absl::Status& s : {layer.status(), budget.status()}) {
    if (!s.ok()) return CommandUsage("prefetch", "[flags]", s, flags);
  }
  std::vector<uint32_t> experts;
  for (absl::string_view part : absl::StrSplit(cl->Value("experts"), ',', absl::SkipEmpty())) {
    uint32_t e;
    if (!absl::SimpleAtoi(part, &e)) {
      return CommandUsage("prefetch", "[flags]",
                          absl::InvalidArgumentError(
                              absl::StrFormat("--experts: '%s' is not an expert number", part)),
                          flags);
    }
    experts.push_back(e);
  }
  auto client = ConnectToServer(*cl);
  auto queued = client.ok() ? (*client)->Prefetch(ModelName(*cl), static_cast<uint32_t>(*layer),
                                                  experts, static_cast<uint32_t>(*budget))
                            : client.status();
  if (!queued.ok()) return CommandError("prefetch", queued.status());
  const auto print = [](const char* what, const auto& ids) {
    std::printf("%-17s %s\n", what, ids.empty() ? "-" : absl::StrJoin(ids, " ").c_str());
  };
  print("queued", queued->queued());
  print("already resident", queued->already_resident());
  print("dropped (budget)", queued->dropped());
  return 0;
}

int StatsCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({ModelFlag()});
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || !cl->positional().empty())
    return CommandUsage("stats", "[flags]", cl.status(), flags);
  auto client = ConnectToServer(*cl);
  auto stats = client.ok() ? (*client)->Stats(ModelName(*cl)) : client.status();
  if (!stats.ok()) return CommandError("stats", stats.status());
  const v1::ModelStats& s = *stats;
  std::printf("model %s: hit rate %.3f over %llu tokens; %s\n", s.model().c_str(), s.hit_rate(),
              static_cast<unsigned long long>(s.routed_tokens()), s.targets_summary().c_str());
  std::printf(
      "cache %.1f of %.1f MiB; %llu evictions; page-ins urgent %llu normal %llu prefetch %llu "
      "(%.1f MiB, mean %.1f us, max %.1f us)\n",
      s.resident_bytes() / 1048576.0, s.budget_bytes() / 1048576.0,
      static_cast<unsigned long long>(s.evictions()),
      static_cast<unsigned long long>(s.page_ins_urgent()),
      static_cast<unsigned long long>(s.page_ins_normal()),
      static_cast<unsigned long long>(s.page_ins_prefetch()), s.paged_bytes() / 1048576.0,
      s.page_in_seconds_mean() * 1e6, s.page_in_seconds_max() * 1e6);
  std::printf(
      "prefetch %llu loaded, %llu used; rerouted %llu tokens, gate mass mean %.4f min %.4f; "
      "checksum failures %llu\n\n",
      static_cast<unsigned long long>(s.prefetch_loaded()),
      static_cast<unsigned long long>(s.prefetch_used()),
      static_cast<unsigned long long>(s.changed_tokens()), s.gate_mass_retained_mean(),
      s.gate_mass_retained_min(), static_cast<unsigned long long>(s.checksum_failures()));
  std::printf("%5s %8s %9s %9s %8s %9s %8s %9s\n", "layer", "tokens", "hit_rate", "resident",
              "page_ins", "page_outs", "coact@1", "coact@2");
  for (const v1::LayerStats& l : s.layers()) {
    std::printf("%5u %8llu %9.3f %9u %8llu %9llu %8.3f %9.3f\n", l.layer(),
                static_cast<unsigned long long>(l.routed_tokens()), l.hit_rate(),
                l.resident_experts(), static_cast<unsigned long long>(l.page_ins()),
                static_cast<unsigned long long>(l.page_outs()), l.coactivation_top1(),
                l.coactivation_top2());
  }
  return 0;
}

int FetchCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({
      ModelFlag(),
      {"layer", true, false, "layer"},
      {"expert", true, false, "expert"},
      {"out", true, false, "safetensors file to write the expert's tensors to"},
  });
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || !cl->Has("out") || !cl->Has("layer") || !cl->Has("expert")) {
    return CommandUsage("fetch", "--layer L --expert E --out FILE [flags]", cl.status(), flags);
  }
  auto layer = cl->Count("layer", 0);
  auto expert = cl->Count("expert", 0);
  if (!layer.ok() || !expert.ok()) {
    return CommandUsage("fetch", "--layer L --expert E --out FILE",
                        !layer.ok() ? layer.status() : expert.status(), flags);
  }
  auto client = ConnectToServer(*cl);
  auto fetched = client.ok() ? (*client)->Fetch(ModelName(*cl), static_cast<uint32_t>(*layer),
                                                static_cast<uint32_t>(*expert))
                             : client.status();
  if (!fetched.ok()) return CommandError("fetch", fetched.status());
  std::vector<SafetensorsWriteTensor> tensors;
  uint64_t offset = 0;
  for (const v1::TensorHeader& t : fetched->header.tensors()) {
    tensors.push_back({t.name(),
                       t.dtype(),
                       {t.shape().begin(), t.shape().end()},
                       fetched->bytes.substr(offset, t.size_bytes())});
    offset += t.size_bytes();
  }
  if (absl::Status s =
          WriteSafetensors(cl->Value("out"), tensors, {{"precision", fetched->header.precision()}});
      !s.ok()) {
    return CommandError("fetch", s);
  }
  std::printf("wrote %s: %d tensors, %llu bytes, checksums verified (expert xxh3 %016llx)\n",
              cl->Value("out").c_str(), fetched->header.tensors_size(),
              static_cast<unsigned long long>(fetched->bytes.size()),
              static_cast<unsigned long long>(fetched->header.expert_xxh3()));
  return 0;
}

}  // namespace moe_router
