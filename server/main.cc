// moe-routerd: the moe-router gRPC service.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "core/base/file_io.h"
#include "core/engine/model_footprint.h"
#include "server/core_to_proto.h"
#include "server/memory_limit.h"
#include "server/server.h"
#include "server/termination_signals.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "address the gRPC service listens on");
ABSL_FLAG(std::string, health_listen, "0.0.0.0:50052",
          "address of a port serving only grpc.health.v1 (empty: none)");
ABSL_FLAG(uint32_t, paging_threads, 2, "paging worker threads per model");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9464",
          "address of the Prometheus /metrics endpoint (empty: none)");
ABSL_FLAG(std::string, config, "",
          "JSON file {\"models\": [ModelSpec, ...]}; without it the embedded default "
          "(mixtral-8x7b on a synthetic store) is served");
ABSL_FLAG(std::string, replica_name, "",
          "this replica's name in answers and errors, so that a caller behind a proxy "
          "knows which replica answered (default: $HOSTNAME, the pod's name)");
ABSL_FLAG(std::string, state_dir, "",
          "directory where learned affinity and co-activation survive restarts");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of the data port (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(std::string, admin_client_ca, "",
          "PEM CA bundle: RegisterModel and UnregisterModel only for clients presenting a "
          "certificate it signed (needs --tls_cert/--tls_key); others get PERMISSION_DENIED");
ABSL_FLAG(bool, disable_model_management, false,
          "refuse RegisterModel and UnregisterModel (PERMISSION_DENIED): models come from "
          "--config only");
ABSL_FLAG(uint32_t, max_tokens_per_request, 65536, "tokens in one RouteTokens request");
ABSL_FLAG(moe_router::ByteSize, memory_limit, {},
          "memory all models together may reserve (budgets, learned state, worker cache "
          "views), like 20GiB; past it RegisterModel is RESOURCE_EXHAUSTED. Default: the "
          "cgroup's memory limit, else physical memory, less 512 MiB for the server itself");
ABSL_FLAG(uint32_t, max_models, 64, "models hosted at once");
ABSL_FLAG(moe_router::ByteSize, max_message_bytes, {64 << 20},
          "largest request or response message");
ABSL_FLAG(uint32_t, max_concurrent_streams, 256, "calls open at once on one client connection");
ABSL_FLAG(absl::Duration, snapshot_interval, absl::Minutes(1),
          "how often learned state is saved to --state_dir while serving");
ABSL_FLAG(uint32_t, max_caches_per_model, 1024,
          "worker caches open at once per model (OpenCache past it: RESOURCE_EXHAUSTED)");
ABSL_FLAG(absl::Duration, cache_idle_timeout, absl::Minutes(10),
          "a worker cache unused for this long is closed");
ABSL_FLAG(absl::Duration, drain_notice, absl::ZeroDuration(),
          "after SIGTERM/SIGINT, how long to keep serving while readiness (gRPC health, "
          "/readyz) says not ready, so load balancers stop sending calls before the drain "
          "refuses them; at least their check interval times their failure threshold "
          "(deploy/haproxy: 2s). A second signal ends the notice at once");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10),
          "after the notice, how long calls in flight may take to complete (open streams end "
          "at their next message); calls still open then are cancelled");

namespace {

std::string ReplicaName() {
  if (std::string flag = absl::GetFlag(FLAGS_replica_name); !flag.empty()) return flag;
  const char* host = std::getenv("HOSTNAME");
  return host != nullptr ? host : "";
}

bool IsThisFile(absl::string_view file) { return absl::EndsWith(file, "server/main.cc"); }

int Fatal(const std::string& what) {
  std::fprintf(stderr, "moe-routerd: %s\n", what.c_str());
  return 1;
}

// The ports (the last line, "listening on port", is what scripts and tests
// wait for) and a warning about plaintext others can reach.
void Announce(const moe_router::RouterServer& server, const moe_router::ServerOptions& options) {
  std::fprintf(stderr, "moe-routerd: metrics on port %d\n", server.metrics_port());
  std::fprintf(stderr, "moe-routerd: health on port %d\n", server.health_port());
  const char* security = options.tls.client_ca.empty()
                             ? (options.tls.cert.empty() ? "plaintext" : "TLS")
                             : "mutual TLS";
  if (options.tls.cert.empty() && !moe_router::IsLoopback(options.listen)) {
    std::fprintf(stderr,
                 "moe-routerd: WARNING: serving plaintext on %s, which other machines can reach: "
                 "anyone who can connect may route, fetch experts%s. Use --tls_cert and --tls_key "
                 "(and --tls_client_ca), or listen on 127.0.0.1 behind a TLS proxy\n",
                 options.listen.c_str(),
                 options.disable_model_management ? "" : " and register or remove models");
  }
  std::fprintf(stderr, "moe-routerd: listening on port %d (%s)\n", server.port(), security);
}

// SIGTERM or SIGINT: not ready for the notice (a second signal ends it),
// then the drain (RouterServer::Shutdown).
void Drain(moe_router::RouterServer& server, const sigset_t& signals) {
  const int signal_number = moe_router::WaitForTerminationSignal(signals);
  server.SetReady(false);
  const absl::Duration notice = absl::GetFlag(FLAGS_drain_notice);
  std::fprintf(stderr, "moe-routerd: signal %d, not ready; draining in %s\n", signal_number,
               absl::FormatDuration(notice).c_str());
  if (moe_router::WaitForTerminationSignalFor(signals, absl::ToInt64Milliseconds(notice))) {
    std::fprintf(stderr, "moe-routerd: second signal, draining now\n");
  }
  std::fprintf(stderr, "moe-routerd: draining: new calls refused, open streams ending\n");
  const absl::Time drain_start = absl::Now();
  server.Shutdown(drain_start + absl::GetFlag(FLAGS_drain_timeout));
  std::fprintf(
      stderr, "moe-routerd: drained in %s, exiting\n",
      absl::FormatDuration(absl::Trunc(absl::Now() - drain_start, absl::Milliseconds(1))).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // absl lists under --help the flags of files named like the program;
  // these are in server/main.cc.
  absl::FlagsUsageConfig usage;
  usage.contains_helpshort_flags = usage.contains_help_flags = IsThisFile;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "the moe-router service (gRPC, health, Prometheus /metrics).\n"
      "  moe-routerd [--config=models.json] [--listen=0.0.0.0:50051] [flags]");
  absl::ParseCommandLine(argc, argv);
  const sigset_t signals = moe_router::BlockTerminationSignals();

  moe_router::v1::ServerConfig config;
  if (const std::string path = absl::GetFlag(FLAGS_config); !path.empty()) {
    auto text = moe_router::ReadFile(path);
    if (!text.ok()) return Fatal(std::string(text.status().message()));
    const auto parsed = google::protobuf::util::JsonStringToMessage(*text, &config);
    if (!parsed.ok()) return Fatal(path + ": " + parsed.ToString());
  } else {
    *config.add_models() = moe_router::DefaultModelSpec();
  }
  moe_router::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.limits.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  const uint64_t message_bytes = absl::GetFlag(FLAGS_max_message_bytes).bytes;
  if (message_bytes < 4096 || message_bytes > (1u << 30)) {
    return Fatal("--max_message_bytes must be in [4KiB, 1GiB]");
  }
  options.max_message_bytes = static_cast<int>(message_bytes);
  options.max_concurrent_streams =
      static_cast<int>(std::min<uint32_t>(absl::GetFlag(FLAGS_max_concurrent_streams), 1 << 20));
  options.snapshot_interval = absl::GetFlag(FLAGS_snapshot_interval);
  moe_router::MemoryLimit memory_limit = {.bytes = absl::GetFlag(FLAGS_memory_limit).bytes,
                                          .source = "--memory_limit"};
  if (memory_limit.bytes == 0) memory_limit = moe_router::DefaultMemoryLimit();
  options.registry = {.state_dir = absl::GetFlag(FLAGS_state_dir),
                      .paging_threads = absl::GetFlag(FLAGS_paging_threads),
                      .worker_caches = {.max_caches = absl::GetFlag(FLAGS_max_caches_per_model),
                                        .idle_timeout = absl::GetFlag(FLAGS_cache_idle_timeout)},
                      .memory_limit_bytes = memory_limit.bytes,
                      .max_models = absl::GetFlag(FLAGS_max_models),
                      .replica = ReplicaName()};
  std::fprintf(stderr, "moe-routerd: models may reserve %s (%s)\n",
               moe_router::FormatBytes(memory_limit.bytes).c_str(), memory_limit.source.c_str());
  options.tls = {.cert = absl::GetFlag(FLAGS_tls_cert),
                 .key = absl::GetFlag(FLAGS_tls_key),
                 .client_ca = absl::GetFlag(FLAGS_tls_client_ca),
                 .admin_client_ca = absl::GetFlag(FLAGS_admin_client_ca)};
  options.disable_model_management = absl::GetFlag(FLAGS_disable_model_management);
  auto server = moe_router::RouterServer::Start(options);
  if (!server.ok()) return Fatal(std::string(server.status().message()));
  for (const auto& spec : config.models()) {
    // Bad startup configuration is fatal, with the reason.
    auto created = (*server)->registry().Register(spec);
    if (!created.ok()) return Fatal(std::string(created.status().message()));
    std::fprintf(stderr, "moe-routerd: serving model %s\n", spec.name().c_str());
  }
  Announce(**server, options);

  Drain(**server, signals);
  // Everything is answered, saved and stopped. What destroying the server
  // would add is gRPC's library teardown, which joins an executor thread
  // that may sit in a poll with a 10 s deadline: the grace period's time,
  // for nothing.
  std::fflush(nullptr);
  std::_Exit(0);
}
