// moe-router worker TRACE --cache-bytes B [--fetch server|DIR] [--workers N]
//   [--policy P] [--in-process] [--compare] [--shared] [--json]: plays
// inference workers with their own caches over a trace against a running
// server, routing remotely or in this process.
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/load_generator.h"
#include "cli/progress.h"
#include "cli/server_connection.h"
#include "cli/worker_play.h"
#include "core/store/safetensors_store.h"
#include "eval/replay.h"
#include "nlohmann/json.hpp"
#include "proto/proto_to_core.h"

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
    auto pattern = ExpertPatternOf(spec->safetensors());
    if (!pattern.ok()) return pattern.status();
    options.expert_pattern = *pattern;
  }
  auto store = SafetensorsStore::Open(options);
  if (!store.ok()) return store.status();
  return std::shared_ptr<const ExpertStore>(*std::move(store));
}

// What the offline replay beside the workers models: demand paging, or the
// model's next-layer prefetch budget per step.
struct ReplaySetting {
  uint32_t prefetch_budget = 0;
  std::string Describe() const {
    return prefetch_budget == 0 ? "demand only"
                                : absl::StrFormat("prefetch %d per step", prefetch_budget);
  }
};

ReplaySetting ReplayFor(const v1::ModelSpec& spec) {
  return {.prefetch_budget = spec.has_prefetch_next_layer() ? spec.prefetch_next_layer() : 2};
}

// The offline replay of one worker's runs back to back, as its cache saw
// them: same budget and policy, routing unchanged, the model's prefetch
// budget. With prefetch, the ready rate is the figure to compare.
absl::StatusOr<double> OfflineHitRate(const WorkerPlayResult& worker, uint64_t cache_bytes,
                                      const ReplaySetting& setting) {
  const WorkerCacheReport& r = worker.report;
  if (r.loads == 0) return r.HitRate();
  ReplayOptions options;
  options.mode = BudgetMode::kGlobalBytes;
  options.amount = cache_bytes;
  options.expert_bytes = r.loaded_bytes / r.loads;
  options.policies = {worker.policy};
  options.prefetch_budget = setting.prefetch_budget;
  auto report = Replay(Concatenated(worker.part), options);
  if (!report.ok()) return report.status();
  const ReplayRow& row = report->rows.front();
  return setting.prefetch_budget == 0 ? row.hit_rate : row.ready_rate;
}

// Per worker row: the layer call's time percentiles and the control
// stream's traffic.
struct CallFigures {
  double p50_us = 0;
  double p99_us = 0;
  double up_per_second = 0;
  double down_per_second = 0;
};

CallFigures FiguresOf(const WorkerPlayResult& w) {
  std::vector<double> sorted = w.route_us;
  std::sort(sorted.begin(), sorted.end());
  const double seconds = w.seconds > 0 ? w.seconds : 1;
  return {.p50_us = Percentile(sorted, 0.50),
          .p99_us = Percentile(sorted, 0.99),
          .up_per_second = w.control.bytes_up / seconds,
          .down_per_second = w.control.bytes_down / seconds};
}

void PrintTable(const std::vector<WorkerPlayResult>& results,
                const std::vector<std::optional<double>>& offline, bool compare,
                const ReplaySetting& setting) {
  if (compare)
    std::printf("replay: the offline replay of each worker's runs, %s\n",
                setting.Describe().c_str());
  std::printf("%-22s %-10s %5s %7s %8s %7s %9s %10s %8s %8s %8s %9s %9s %9s%s\n", "worker", "mode",
              "runs", "tokens", "hit rate", "loads", "evictions", "MB moved", "p50 us", "p99 us",
              "fetch s", "tokens/s", "up B/s", "down B/s", compare ? "   replay" : "");
  for (size_t i = 0; i < results.size(); ++i) {
    const WorkerPlayResult& w = results[i];
    const WorkerCacheReport& r = w.report;
    const CallFigures f = FiguresOf(w);
    std::printf(
        "%-22s %-10s %5zu %7llu %8.3f %7llu %9llu %10.1f %8.1f %8.1f %8.2f %9.0f %9.0f %9.0f%s\n",
        w.cache.c_str(), w.mode.c_str(), w.part.runs.size(),
        static_cast<unsigned long long>(w.part.Tokens()), r.HitRate(),
        static_cast<unsigned long long>(r.loads), static_cast<unsigned long long>(r.evictions),
        r.loaded_bytes / 1e6, f.p50_us, f.p99_us, r.load_seconds, w.TokensPerSecond(),
        f.up_per_second, f.down_per_second,
        offline[i] ? absl::StrFormat(" %8.3f", *offline[i]).c_str() : "");
  }
}

void PrintJson(const WorkerPlayOptions& options, const std::vector<WorkerPlayResult>& results,
               const std::vector<std::optional<double>>& offline, const ReplaySetting& setting) {
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const WorkerPlayResult& w = results[i];
    const WorkerCacheReport& r = w.report;
    const CallFigures f = FiguresOf(w);
    nlohmann::json row = {{"cache", w.cache},
                          {"mode", w.mode},
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
                          {"route_us_p50", f.p50_us},
                          {"route_us_p99", f.p99_us},
                          {"control_bytes_up_per_second", f.up_per_second},
                          {"control_bytes_down_per_second", f.down_per_second},
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
                                      {"replay", setting.Describe()},
                                      {"workers", rows}})
                          .dump(2)
                          .c_str());
}

// The modes to play: remote, in process, or (--in-process --compare) both,
// remote first, each with caches of its own; their rows in that order.
absl::StatusOr<std::vector<WorkerPlayResult>> PlayModes(Client& client, const RoutingTrace& trace,
                                                        const WorkerPlayOptions& options,
                                                        bool in_process, bool compare) {
  std::vector<WorkerPlayOptions> modes;
  if (!in_process || compare) modes.push_back(options);
  if (in_process) {
    WorkerPlayOptions local = options;
    local.in_process_channel = client.channel();
    if (!modes.empty()) local.cache_prefix += "in-process-";
    modes.push_back(std::move(local));
  }
  std::vector<WorkerPlayResult> results;
  for (const WorkerPlayOptions& mode : modes) {
    ProgressBar bar("worker", trace.Steps());
    auto played =
        PlayWorkers(client, trace, mode, [&](uint64_t done, uint64_t) { bar.Update(done); });
    bar.Finish();
    if (!played.ok()) return played.status();
    results.insert(results.end(), played->begin(), played->end());
  }
  return results;
}

// The table or JSON, with the offline replays beside the rows for --compare.
int Report(const CommandLine& cl, const WorkerPlayOptions& options,
           const std::vector<WorkerPlayResult>& results, const ReplaySetting& setting) {
  std::vector<std::optional<double>> offline(results.size());
  if (cl.Has("compare") && !options.shared_server_cache) {
    for (size_t w = 0; w < results.size(); ++w) {
      auto rate = OfflineHitRate(results[w], options.cache_bytes, setting);
      if (!rate.ok()) return CommandError("worker", rate.status());
      offline[w] = *rate;
    }
  }
  if (cl.Has("json")) {
    PrintJson(options, results, offline, setting);
  } else {
    PrintTable(results, offline, cl.Has("compare"), setting);
  }
  return 0;
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
      {"in-process", false, false,
       "route in this process (InProcessWorker, learning over the Learn stream); with "
       "--compare, remote workers' rows too"},
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
  if (cl->Has("in-process") && options.shared_server_cache) {
    return CommandUsage(
        "worker", usage,
        absl::InvalidArgumentError(
            "--in-process routes against each worker's own cache; --shared has none"),
        flags);
  }
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
  auto spec = (*client)->FindModel(options.model);
  if (!spec.ok()) return CommandError("worker", spec.status());
  const ReplaySetting setting = ReplayFor(*spec);
  auto results = PlayModes(**client, *trace, options, cl->Has("in-process"), cl->Has("compare"));
  if (!results.ok()) return CommandError("worker", results.status());
  return Report(*cl, options, *results, setting);
}

}  // namespace moe_router
