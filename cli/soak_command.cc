// moe-router soak: drives a running server hard for a while and checks it
// all along (budgets, queues, failures, resident memory); exits 1 if any
// check failed.
#include <algorithm>
#include <cstdio>

#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/server_connection.h"
#include "cli/soak.h"

namespace moe_router {

int SoakCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({
      ModelFlag(),
      {"duration", true, false, "seconds to run (default 60)"},
      {"warmup", true, false, "seconds before resident memory is judged (default 10)"},
      {"workers", true, false, "routing workers, each with its own worker cache (default 4)"},
      {"cache-bytes", true, false,
       "each worker cache's budget (default: a quarter of the model's)"},
      {"metrics", true, false,
       "the server's metrics port on the --server host, for its resident memory (default: none)"},
      {"no-churn", false, false, "do not register and unregister a scratch model"},
  });
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || !cl->positional().empty()) {
    return CommandUsage("soak", "[flags]", cl.status(), flags);
  }
  SoakOptions options;
  options.model = ModelName(*cl);
  options.churn = !cl->Has("no-churn");
  auto duration = cl->Number("duration", 60);
  auto warmup = cl->Number("warmup", 10);
  auto workers = cl->Count("workers", options.workers);
  auto cache_bytes = cl->Count("cache-bytes", 0);
  auto metrics = cl->Count("metrics", 0);
  for (const absl::Status& s : {duration.status(), warmup.status(), workers.status(),
                                cache_bytes.status(), metrics.status()}) {
    if (!s.ok()) return CommandUsage("soak", "[flags]", s, flags);
  }
  options.duration = absl::Seconds(*duration);
  options.warmup = absl::Seconds(*warmup);
  options.workers = static_cast<uint32_t>(*workers);
  options.cache_bytes = *cache_bytes;
  options.metrics_port = static_cast<int>(*metrics);
  options.metrics_host = ServerHost(*cl);
  auto client = ConnectToServer(*cl);
  if (!client.ok()) return CommandError("soak", client.status());
  ProgressBar bar("soak", 1000);
  auto report = RunSoak(**client, options, [&](absl::Duration elapsed) {
    bar.Update(
        static_cast<uint64_t>(1000 * std::min(1.0, absl::FDivDuration(elapsed, options.duration))));
  });
  bar.Finish();
  if (!report.ok()) return CommandError("soak", report.status());
  std::printf("%s\n", report->ToString().c_str());
  return report->ok() ? 0 : 1;
}

}  // namespace moe_router
