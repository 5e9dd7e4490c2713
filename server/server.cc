#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <cstdio>

#include "absl/strings/str_format.h"

namespace moe_router {

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto server = std::unique_ptr<RouterServer>(new RouterServer(options));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(&server->service_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on %s", options.listen));
  }
  if (!options.metrics_listen.empty()) {
    auto metrics = MetricsExporter::Start(options.metrics_listen, &server->registry_);
    if (!metrics.ok()) return metrics.status();
    server->metrics_ = *std::move(metrics);
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  for (const char* name : {"", "liveness", "readiness", "moe_router.v1.MoeRouter"}) {
    health->SetServingStatus(name, true);
  }
  return server;
}

void RouterServer::SetReady(bool ready) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  for (const char* name : {"", "readiness", "moe_router.v1.MoeRouter"}) {
    health->SetServingStatus(name, ready);
  }
}

RouterServer::~RouterServer() { Shutdown(absl::Now()); }

void RouterServer::Shutdown(absl::Time deadline) {
  if (stopped_) return;
  stopped_ = true;
  server_->Shutdown(absl::ToChronoTime(deadline));
  server_->Wait();
  if (absl::Status s = registry_.SaveStates(); !s.ok()) {
    std::fprintf(stderr, "moe-router: saving learned state failed: %s\n",
                 std::string(s.message()).c_str());
  }
  for (const auto& model : registry_.List()) model->engine->Shutdown();
}

}  // namespace moe_router
