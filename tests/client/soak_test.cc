// `moe-router soak` against the real server, over real channels, for
// MOE_SOAK_SECONDS (60 in CI): no call fails except by deadline, no budget
// or queue bound is ever exceeded, and the report says the server's
// resident memory slope (the closing figure; not asserted, machines vary).
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core_to_proto.h"
#include "server/server.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

TEST(SoakTest, ServerHoldsItsBoundsUnderLoadAndChurn) {
  testing::TempDir dir;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.health_listen = "";
  options.registry.state_dir = dir.path();
  options.snapshot_interval = absl::Seconds(5);
  options.registry.worker_caches.idle_timeout = absl::Seconds(2);
  auto server = RouterServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)->registry().Register(DefaultModelSpec()).ok());

  const testing::CommandResult soak = testing::RunCommand(absl::StrFormat(
      "%s soak --server 127.0.0.1:%d --metrics %d --duration %d --warmup %d --workers 4",
      MOE_ROUTER_CLI_PATH, (*server)->port(), (*server)->metrics_port(), MOE_SOAK_SECONDS,
      MOE_SOAK_SECONDS / 6));
  std::printf("%s\n", soak.output.c_str());  // the figures, for the log
  EXPECT_EQ(soak.exit_code, 0) << soak.output;
  EXPECT_THAT(soak.output, HasSubstr("failures: 0 "));
  EXPECT_THAT(soak.output, HasSubstr("invariant violations: 0"));
  EXPECT_THAT(soak.output, HasSubstr("server resident memory"));
  EXPECT_THAT(soak.output, HasSubstr("register "));
}

}  // namespace
}  // namespace moe_router
