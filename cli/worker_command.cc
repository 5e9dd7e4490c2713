// moe-router worker TRACE --cache-bytes B [--fetch server|DIR] [--workers N]
//   [--policy P] [--compare] [--shared] [--json]: plays inference workers
// with their own caches over a trace against a running server.
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/server_connection.h"
#include "cli/worker_play.h"
#include "core/safetensors_store.h"
#include "eval/replay.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace {

// --fetch DIR: each worker reads the model's checkpoint layout from DIR.
absl::StatusOr<std::shared_ptr<const ExpertStore>> LocalStore(Client& client,
                                                              const std::string& model,
                                                              const std::string& directory) {
  auto spec = client.FindModel(model);
  if (!spec.ok()) return spec.status();
  SafetensorsStoreOptions options{.directory = directory};
  if (spec->has_safetensors()) {
    if (!spec->safetensors().pattern().empty()) {
      options.expert_pattern = spec->safetensors().pattern();
    } else if (!spec->safetensors().name_preset().empty()) {
      auto pattern = ExpertPatternPreset(spec->safetensors().name_preset());
      if (!pattern.ok()) return pattern.status();
      options.expert_pattern = *pattern;
    }
  }
  auto store = SafetensorsStore::Open(options);
  if (!store.ok()) return store.status();
  return std::shared_ptr<const ExpertStore>(*std::move(store));
}

// The offline replay of one worker's runs back to back, as its cache saw
// them: same budget and policy, routing unchanged, no prefetch.
absl::StatusOr<double> OfflineHitRate(const WorkerPlayResult& worker, uint64_t cache_bytes) {
  const WorkerCacheReport& r = worker.report;
  if (r.loads == 0) return r.HitRate();
  ReplayOptions options;
  options.mode = BudgetMode::kGlobalBytes;
  options.amount = cache_bytes;
  options.expert_bytes = r.loaded_bytes / r.loads;
  options.policies = {worker.policy};
  auto report = Replay(Concatenated(worker.part), options);
  if (!report.ok()) return report.status();
  return report->rows.front().hit_rate;
}

void PrintTable(const std::vector<WorkerPlayResult>& results,
                const std::vector<std::optional<double>>& offline, bool compare) {
  std::printf("%-22s %5s %7s %8s %7s %9s %10s %8s %8s %9s%s\n", "worker", "runs", "tokens",
              "hit rate", "loads", "evictions", "MB moved", "route s", "fetch s", "tokens/s",
              compare ? "   replay" : "");
  for (size_t i = 0; i < results.size(); ++i) {
    const WorkerPlayResult& w = results[i];
    const WorkerCacheReport& r = w.report;
    std::printf("%-22s %5zu %7llu %8.3f %7llu %9llu %10.1f %8.2f %8.2f %9.0f%s\n", w.cache.c_str(),
                w.part.runs.size(), static_cast<unsigned long long>(w.part.Tokens()), r.HitRate(),
                static_cast<unsigned long long>(r.loads),
                static_cast<unsigned long long>(r.evictions), r.loaded_bytes / 1e6, r.route_seconds,
                r.load_seconds, w.TokensPerSecond(),
                offline[i] ? absl::StrFormat(" %8.3f", *offline[i]).c_str() : "");
  }
}

void PrintJson(const WorkerPlayOptions& options, const std::vector<WorkerPlayResult>& results,
               const std::vector<std::optional<double>>& offline) {
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const WorkerPlayResult& w = results[i];
    const WorkerCacheReport& r = w.report;
    nlohmann::json row = {{"cache", w.cache},
                          {"runs", w.part.runs.size()},
                          {"tokens", w.part.Tokens()},
                          {"routed_steps", r.route_calls},
                          {"accesses", r.accesses},
                          {"hit_rate", r.HitRate()},
                          {"loads", r.loads},
                          {"evictions", r.evictions},
                          {"streamed", r.streamed},
                          {"loaded_bytes", r.loaded_bytes},
                          {"route_seconds", r.route_seconds},
                          {"fetch_seconds", r.load_seconds},
                          {"seconds", w.seconds},
                          {"tokens_per_second", w.TokensPerSecond()},
                          {"policy", w.policy}};
    if (offline[i]) row["replay_hit_rate"] = *offline[i];
    rows.push_back(std::move(row));
  }
  std::printf("%s\n", nlohmann::json({{"model", options.model},
                                      {"cache_bytes", options.cache_bytes},
                                      {"shared_server_cache", options.shared_server_cache},
                                      {"workers", rows}})
                          .dump(2)
                          .c_str());
}

}  // namespace

int WorkerCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({
      ModelFlag(),
      {"cache-bytes", true, false, "each worker's cache budget in bytes"},
      {"fetch", true, false,
       "where workers load experts: server (FetchExpert, the default) or a checkpoint DIR"},
      {"workers", true, false, "concurrent workers; runs go round-robin (default 1)"},
      {"policy", true, false, "eviction policy of the workers' caches (default: the model's)"},
      {"cache-prefix", true, false,
       "cache names are this plus the worker index (default host-pid-)"},
      {"compare", false, false, "beside each worker, the offline replay of its runs"},
      {"shared", false, false,
       "no worker caches: route against the server's one cache, as before (hit rates only)"},
      {"json", false, false, "print one JSON object"},
  });
  const char* usage = "TRACE --cache-bytes B [flags]";
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || cl->positional().size() != 1)
    return CommandUsage("worker", usage, cl.status(), flags);
  auto cache_bytes = cl->Count("cache-bytes", 0);
  auto workers = cl->Count("workers", 1);
  for (const absl::Status& s : {cache_bytes.status(), workers.status()}) {
    if (!s.ok()) return CommandUsage("worker", usage, s, flags);
  }
  char host[64] = "worker";
  gethostname(host, sizeof(host) - 1);
  WorkerPlayOptions options;
  options.model = ModelName(*cl);
  options.workers = static_cast<uint32_t>(*workers);
  options.cache_bytes = *cache_bytes;
  options.eviction_policy = cl->Value("policy");
  options.cache_prefix = cl->Value("cache-prefix", absl::StrCat(host, "-", getpid(), "-"));
  options.shared_server_cache = cl->Has("shared");
  auto trace = ReadTrace(cl->positional()[0]);
  if (!trace.ok()) return CommandError("worker", trace.status());
  auto client = ConnectToServer(*cl);
  if (!client.ok()) return CommandError("worker", client.status());
  if (const std::string fetch = cl->Value("fetch", "server"); fetch != "server") {
    auto store = LocalStore(**client, options.model, fetch);
    if (!store.ok()) return CommandError("worker", store.status());
    options.make_source = [store = *store]() -> absl::StatusOr<std::unique_ptr<ExpertSource>> {
      return StoreExpertSource(store);
    };
  }
  ProgressBar bar("worker", trace->Steps());
  auto results =
      PlayWorkers(**client, *trace, options, [&](uint64_t done, uint64_t) { bar.Update(done); });
  bar.Finish();
  if (!results.ok()) return CommandError("worker", results.status());

  std::vector<std::optional<double>> offline(results->size());
  if (cl->Has("compare") && !options.shared_server_cache) {
    for (size_t w = 0; w < results->size(); ++w) {
      auto rate = OfflineHitRate((*results)[w], options.cache_bytes);
      if (!rate.ok()) return CommandError("worker", rate.status());
      offline[w] = *rate;
    }
  }
  if (cl->Has("json")) {
    PrintJson(options, *results, offline);
  } else {
    PrintTable(*results, offline, cl->Has("compare"));
  }
  return 0;
}

}  // namespace moe_router
