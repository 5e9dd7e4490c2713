#include "tests/testing/local_server.h"

#include "gtest/gtest.h"

namespace moe_router::testing {

ServerOptions LocalServerOptions(const std::string& listen) {
  ServerOptions options;
  options.listen = listen;
  options.metrics_listen = "";
  options.health_listen = "";
  return options;
}

std::unique_ptr<RouterServer> StartLocalServer(const ServerOptions& options) {
  auto server = RouterServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

}  // namespace moe_router::testing
