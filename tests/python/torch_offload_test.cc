// moe_router.torch's pytest suite (torch_offload_test.py) on Debian's
// /usr/bin/python3 and torch, with a real moe-routerd on 127.0.0.1:0 for the
// fleet test and the CLI for reading recorded traces.
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

TEST(TorchOffloadTest, PytestSuitePasses) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.health_listen = "";
  auto server = RouterServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const testing::CommandResult run = testing::RunCommand(absl::StrCat(
      "cd ", TESTS_DIR, " && PYTHONPATH=", PY_PACKAGE_DIR,
      " MOE_ROUTER_SERVER=127.0.0.1:", (*server)->port(), " MOE_ROUTER_CLI=", CLI_PATH,
      " /usr/bin/python3 -m pytest -q -p no:cacheprovider torch_offload_test.py 2>&1"));
  EXPECT_EQ(run.exit_code, 0) << run.output;
}

}  // namespace
}  // namespace moe_router
