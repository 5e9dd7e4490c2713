// moe-router demo: an inference loop over the core engine on the embedded
// default model, printing what the cache and router did.
#include <cstdio>
#include <memory>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "core/engine/defaults.h"
#include "eval/workload.h"

namespace moe_router {
namespace {

const std::vector<FlagSpec>& DemoFlags() {
  static const std::vector<FlagSpec> flags = {
      {"sequences", true, false, "concurrent sequences, one token each per step (default 8)"},
      {"tokens", true, false, "decode steps per sequence (default 128)"},
      {"policy", true, false, "eviction policy (default layer_reuse)"},
      {"bonus", true, false,
       "relative cache bonus (default: the router default; 0 routes unchanged)"},
      {"seed", true, false, "workload seed (default 1)"},
  };
  return flags;
}

void PrintStats(const ModelStats& s, double wall_seconds) {
  const MetricsSnapshot& m = s.metrics;
  std::printf("model %s: %s\n", s.name.c_str(), s.store.c_str());
  std::printf("  routed tokens          %llu (x %u layers) in %.2f s\n",
              static_cast<unsigned long long>(m.total.routed_tokens / m.layers.size()),
              static_cast<unsigned>(m.layers.size()), wall_seconds);
  std::printf("  cache hit rate         %.3f  (%llu hits, %llu misses)\n", m.total.HitRate(),
              static_cast<unsigned long long>(m.total.hits),
              static_cast<unsigned long long>(m.total.misses));
  std::printf("  page-ins               urgent %llu, normal %llu, prefetch %llu; %.1f MiB moved\n",
              static_cast<unsigned long long>(m.total.page_ins[0]),
              static_cast<unsigned long long>(m.total.page_ins[1]),
              static_cast<unsigned long long>(m.total.page_ins[2]),
              m.total.paged_bytes / 1048576.0);
  std::printf("  page-in latency        mean %.1f us, max %.1f us\n",
              m.page_in_seconds.Mean() * 1e6, m.page_in_seconds.max * 1e6);
  std::printf("  evictions              %llu (%s)\n",
              static_cast<unsigned long long>(s.cache.evictions), s.cache.policy.c_str());
  std::printf("  prefetch               %llu issued, %llu used before eviction, %llu dropped\n",
              static_cast<unsigned long long>(s.cache.prefetch_loaded),
              static_cast<unsigned long long>(s.cache.prefetch_used),
              static_cast<unsigned long long>(m.total.prefetch_dropped));
  std::printf("  routing changed        %.3f of tokens, gate mass retained mean %.4f min %.4f\n",
              m.total.routed_tokens
                  ? static_cast<double>(m.total.changed_tokens) / m.total.routed_tokens
                  : 0,
              m.gate_mass.Mean(), m.gate_mass_min);
  double top1 = 0, top2 = 0;
  for (size_t l = 1; l < s.layers.size(); ++l) {
    top1 += s.layers[l].coactivation_top1;
    top2 += s.layers[l].coactivation_top2;
  }
  const double layers = s.layers.size() > 1 ? s.layers.size() - 1 : 1;
  std::printf("  next-layer prediction  top-1 %.3f, top-2 %.3f\n", top1 / layers, top2 / layers);
  std::printf("  cache                  %.1f of %.1f MiB resident, peak %.1f MiB\n",
              s.cache.resident_bytes / 1048576.0, s.cache.budget_bytes / 1048576.0,
              s.cache.peak_bytes / 1048576.0);
  std::printf("  targets                %s\n", m.targets.ToString().c_str());
}

}  // namespace

int DemoCommand(const std::vector<std::string>& args) {
  auto cl = CommandLine::Parse(args, DemoFlags());
  auto sequences = cl.ok() ? cl->Count("sequences", 8) : cl.status();
  auto tokens = cl.ok() ? cl->Count("tokens", 128) : cl.status();
  auto bonus = cl.ok() ? cl->Number("bonus", RouterConfig{}.cache_bonus) : cl.status();
  auto seed = cl.ok() ? cl->Count("seed", 1) : cl.status();
  for (const absl::Status& s :
       {cl.status(), sequences.status(), tokens.status(), bonus.status(), seed.status()}) {
    if (!s.ok()) return CommandUsage("demo", "[flags]", s, DemoFlags());
  }
  ModelConfig config = DefaultModelConfig();
  config.eviction_policy = cl->Value("policy", config.eviction_policy);
  config.router.cache_bonus = *bonus;
  auto store = SyntheticStore::Create(DefaultStoreOptions());
  auto model = store.ok() ? ModelEngine::Create(config, *std::move(store)) : store.status();
  if (!model.ok()) return CommandError("demo", model.status());
  WorkloadShape shape;
  shape.num_layers = config.num_layers;
  shape.num_experts = config.router.num_experts;
  shape.top_k = config.router.top_k;
  std::vector<std::unique_ptr<SyntheticRouting>> streams;
  for (uint64_t s = 0; s < *sequences; ++s) {
    streams.push_back(std::make_unique<SyntheticRouting>(shape, *seed * 1000 + s));
  }
  const uint32_t n = config.router.num_experts;
  std::vector<float> batch(*sequences * n);
  ProgressBar bar("demo", *tokens);
  const absl::Time start = absl::Now();
  for (uint64_t t = 0; t < *tokens; ++t) {
    for (auto& stream : streams) stream->NextToken();
    for (uint32_t layer = 0; layer < config.num_layers; ++layer) {
      for (uint64_t s = 0; s < *sequences; ++s) {
        std::copy_n(streams[s]->current().begin() + size_t{layer} * n, n, batch.begin() + s * n);
      }
      auto routed = (*model)->Route(layer, batch);
      if (!routed.ok()) return CommandError("demo", routed.status());
      // Like an inference worker: the layer cannot run until its chosen
      // experts are resident.
      for (const ExpertKey& key : routed->urgent) {
        auto expert = (*model)->Fetch(key, absl::Now() + absl::Seconds(10));
        if (!expert.ok()) return CommandError("demo", expert.status());
      }
    }
    bar.Update(t + 1);
  }
  bar.Finish();
  PrintStats((*model)->Stats(), absl::ToDoubleSeconds(absl::Now() - start));
  return 0;
}

}  // namespace moe_router
