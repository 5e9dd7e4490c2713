#ifndef MOE_ROUTER_TESTS_TESTING_LOCAL_SERVER_H_
#define MOE_ROUTER_TESTS_TESTING_LOCAL_SERVER_H_

#include <memory>
#include <string>

#include "server/server.h"

namespace moe_router::testing {

/// A server's options for `listen` without its metrics and health ports,
/// which tests that do not probe them leave closed.
ServerOptions LocalServerOptions(const std::string& listen = "127.0.0.1:0");

/// The real server started with `options`, or null after a test failure
/// naming why it did not start.
std::unique_ptr<RouterServer> StartLocalServer(const ServerOptions& options = LocalServerOptions());

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_LOCAL_SERVER_H_
