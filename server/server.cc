#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "server/memory_limit.h"

namespace moe_router {

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto credentials = ServerCredentialsFor(options.tls);
  if (!credentials.ok()) return credentials.status();
  auto admin = AdminAccess::Create({.disable_model_management = options.disable_model_management,
                                    .admin_client_ca = options.tls.admin_client_ca});
  if (!admin.ok()) return admin.status();
  auto server = std::unique_ptr<RouterServer>(new RouterServer(options, *std::move(admin)));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  // A port is one replica's: a second server started on it by mistake must
  // fail, not silently take half the workers (and their cache views).
  // gRPC shares ports (SO_REUSEPORT) unless told not to.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Clients ping every 30 s (client/client.cc) to keep long streams alive
  // through proxies; gRPC's default would count pings under 5 min apart as
  // abuse and close the connection.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 20000);
  // gRPC's own buffers come out of the server's headroom, not the models'.
  grpc::ResourceQuota quota("moe-routerd");
  builder.SetResourceQuota(quota.Resize(kServerHeadroomBytes / 2));
  builder.RegisterService(&server->service_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on %s", options.listen));
  }
  if (!options.health_listen.empty()) {
    // Only the built-in health service: nothing else is registered on it.
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                                    &server->health_port_);
    health_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    server->health_server_ = health_builder.BuildAndStart();
    if (server->health_server_ == nullptr || server->health_port_ == 0) {
      return absl::UnavailableError(
          absl::StrFormat("cannot serve health on %s", options.health_listen));
    }
  }
  if (!options.metrics_listen.empty()) {
    auto metrics =
        MetricsExporter::Start(options.metrics_listen, &server->registry_, &server->probes_);
    if (!metrics.ok()) return metrics.status();
    server->metrics_ = *std::move(metrics);
  }
  for (grpc::Server* s : {server->server_.get(), server->health_server_.get()}) {
    if (s == nullptr) continue;
    for (const char* name : {"", "liveness", "readiness", "moe_router.v1.MoeRouter"}) {
      s->GetHealthCheckService()->SetServingStatus(name, true);
    }
  }
  server->probes_.live.store(true, std::memory_order_relaxed);
  server->probes_.ready.store(true, std::memory_order_relaxed);
  server->housekeeper_ = std::thread([raw = server.get()] { raw->Housekeep(); });
  return server;
}

void RouterServer::Housekeep() {
  // A cache lives at least its timeout and at most a quarter more.
  const absl::Duration period = std::clamp(registry_.worker_cache_limits().idle_timeout / 4,
                                           absl::Milliseconds(10), absl::Minutes(1));
  absl::Time next_snapshot = absl::Now() + snapshot_interval_;
  while (!stop_housekeeping_.WaitForNotificationWithTimeout(
      std::min(period, next_snapshot - absl::Now()))) {
    if (const size_t closed = registry_.CloseIdleCaches(absl::Now()); closed > 0) {
      std::fprintf(stderr, "moe-router: closed %zu idle worker cache(s)\n", closed);
    }
    if (absl::Now() >= next_snapshot) {
      SaveStates();
      next_snapshot = absl::Now() + snapshot_interval_;
    }
  }
}

void RouterServer::SaveStates() {
  // A failure is counted by the registry and leaves the previous snapshot.
  if (absl::Status s = registry_.SaveStates(); !s.ok()) {
    std::fprintf(stderr, "moe-router: saving learned state failed: %s\n",
                 std::string(s.message()).c_str());
  }
}

void RouterServer::SetReady(bool ready) {
  probes_.ready.store(ready, std::memory_order_relaxed);
  for (grpc::Server* s : {server_.get(), health_server_.get()}) {
    if (s == nullptr) continue;
    for (const char* name : {"", "readiness", "moe_router.v1.MoeRouter"}) {
      s->GetHealthCheckService()->SetServingStatus(name, ready);
    }
  }
}

RouterServer::~RouterServer() { Shutdown(absl::Now()); }

void RouterServer::Shutdown(absl::Time deadline) {
  if (stopped_) return;
  stopped_ = true;
  probes_.ready.store(false, std::memory_order_relaxed);
  probes_.live.store(false, std::memory_order_relaxed);
  stop_housekeeping_.Notify();
  if (housekeeper_.joinable()) housekeeper_.join();
  // A server that failed to start may have no gRPC server.
  if (server_ != nullptr) {
    gate_.BeginDrain();
    if (!gate_.AwaitIdle(deadline)) {
      std::fprintf(stderr, "moe-router: %zu call(s) still open at the drain deadline: cancelled\n",
                   gate_.in_flight());
    }
    // Every call is done now; what is left is gRPC's graceful GOAWAY, which
    // waits for each connection to answer a ping. A client with a call in
    // progress answers at once; an idle one only when gRPC's backup poller
    // next reads its socket, up to 5 s later, and has nothing in flight to
    // lose: so the GOAWAY gets a second, then connections are closed.
    server_->Shutdown(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Seconds(1))));
    server_->Wait();
  }
  if (health_server_ != nullptr) {
    health_server_->Shutdown(absl::ToChronoTime(absl::Now()));
    health_server_->Wait();
  }
  SaveStates();
  for (const auto& model : registry_.List()) model->engine->Shutdown();
}

}  // namespace moe_router
