// moe-router loadgen: closed-loop load on a server's RouteTokens or
// RouteStream; prints tokens/s and latency percentiles.
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/load_generator.h"
#include "cli/progress.h"
#include "cli/server_connection.h"
#include "nlohmann/json.hpp"

namespace moe_router {

int LoadgenCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = WithServerFlags({
      ModelFlag(),
      {"concurrency", true, false, "workers, each with one call outstanding (default 8)"},
      {"batch", true, false, "tokens per request (default 64)"},
      {"duration", true, false, "seconds measured (default 10)"},
      {"warmup", true, false, "seconds of calls before measuring (default 1)"},
      {"stream", false, false, "one RouteStream per worker instead of unary RouteTokens"},
      {"seed", true, false, "seed of the random logits (default 1)"},
      {"cache-bytes", true, false,
       "each worker routes against a worker cache of its own of B bytes (default: none)"},
      {"json", false, false, "print one JSON object"},
  });
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || !cl->positional().empty())
    return CommandUsage("loadgen", "[flags]", cl.status(), flags);
  LoadOptions options;
  options.model = ModelName(*cl);
  options.stream = cl->Has("stream");
  auto concurrency = cl->Count("concurrency", options.concurrency);
  auto batch = cl->Count("batch", options.batch_tokens);
  auto duration = cl->Number("duration", 10);
  auto warmup = cl->Number("warmup", 1);
  auto seed = cl->Count("seed", options.seed);
  auto cache_bytes = cl->Count("cache-bytes", 0);
  for (const absl::Status& s : {concurrency.status(), batch.status(), duration.status(),
                                warmup.status(), seed.status(), cache_bytes.status()}) {
    if (!s.ok()) return CommandUsage("loadgen", "[flags]", s, flags);
  }
  options.concurrency = static_cast<uint32_t>(*concurrency);
  options.batch_tokens = static_cast<uint32_t>(*batch);
  options.duration = absl::Seconds(*duration);
  options.warmup = absl::Seconds(std::max(0.0, *warmup));
  options.seed = *seed;
  options.cache_bytes = *cache_bytes;
  options.cache_prefix = absl::StrCat("loadgen-", getpid(), "-");
  auto client = ConnectToServer(*cl);
  if (!client.ok()) return CommandError("loadgen", client.status());
  ProgressBar bar("loadgen", 1000);
  auto report = GenerateLoad(**client, options, [&](absl::Duration elapsed, absl::Duration total) {
    bar.Update(static_cast<uint64_t>(1000 * (elapsed / total)));
  });
  bar.Finish();
  if (!report.ok()) return CommandError("loadgen", report.status());
  const LoadReport& r = *report;
  uint64_t errors = 0;
  for (const auto& [code, n] : r.errors) errors += n;
  const char* via = options.stream ? "RouteStream" : "RouteTokens";
  if (cl->Has("json")) {
    const nlohmann::json out = {{"via", via},
                                {"cache_bytes", options.cache_bytes},
                                {"concurrency", options.concurrency},
                                {"batch_tokens", options.batch_tokens},
                                {"calls", r.calls},
                                {"tokens", r.tokens},
                                {"seconds", r.seconds},
                                {"tokens_per_second", r.TokensPerSecond()},
                                {"calls_per_second", r.CallsPerSecond()},
                                {"p50_us", r.p50_us},
                                {"p99_us", r.p99_us},
                                {"p999_us", r.p999_us},
                                {"max_us", r.max_us},
                                {"errors", r.errors}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("%s, concurrency %u, %u tokens per call: %llu calls in %.2f s\n", via,
                options.concurrency, options.batch_tokens, static_cast<unsigned long long>(r.calls),
                r.seconds);
    std::printf(
        "%.0f tokens/s (%.0f calls/s); latency p50 %.1f us, p99 %.1f us, p99.9 %.1f us, "
        "max %.1f us\n",
        r.TokensPerSecond(), r.CallsPerSecond(), r.p50_us, r.p99_us, r.p999_us, r.max_us);
  }
  if (errors > 0) {
    std::fprintf(stderr, "moe-router loadgen: %llu calls failed, first: %s\n",
                 static_cast<unsigned long long>(errors), r.first_error.c_str());
    return 1;
  }
  return 0;
}

}  // namespace moe_router
