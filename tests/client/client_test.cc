// The C++ client and the moe-router CLI against a real server on port 0.
#include "client/client.h"

#include "core/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    auto server = RouterServer::Start(options);
    ASSERT_TRUE(server.ok());
    server_ = *std::move(server);
    v1::ModelSpec spec;
    spec.set_name("tiny");
    spec.set_num_layers(2);
    spec.set_num_experts(8);
    spec.set_top_k(2);
    spec.set_budget_bytes(8 * 3000);
    spec.mutable_synthetic()->set_expert_bytes(3000);
    ASSERT_TRUE(server_->registry().Register(spec).ok());
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    client_ = *Client::Connect(address_);
  }

  // Runs the CLI; its output (stdout and stderr) and exit code.
  std::pair<std::string, int> Cli(const std::string& args) {
    const testing::CommandResult r = testing::RunCommand(std::string(MOE_ROUTER_CLI_PATH) + " " + args);
    return {r.output, r.exit_code};
  }

  std::unique_ptr<RouterServer> server_;
  std::string address_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientTest, TypedCallsAndStatuses) {
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok());
  ASSERT_EQ(models->size(), 1u);
  auto routed = client_->Route("tiny", 1, std::vector<float>{0, 0, 9, 0, 0, 8, 0, 0});
  ASSERT_TRUE(routed.ok()) << routed.status();
  EXPECT_THAT(routed->experts(), ::testing::ElementsAre(2u, 5u));
  auto missing = client_->Route("ghost", 0, std::vector<float>(8, 0));
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  auto fetched = client_->Fetch("tiny", 1, 4);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->bytes.size(), 3000u);
  EXPECT_EQ(fetched->header.tensors_size(), 3);
  auto stats = client_->Stats("tiny");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->routed_tokens(), 1u);
  EXPECT_TRUE(client_->Unregister("tiny").ok());
  EXPECT_TRUE(absl::IsNotFound(client_->Stats("tiny").status()));
}

TEST_F(ClientTest, CliCommands) {
  auto [models, code] = Cli("models --server " + address_);
  EXPECT_EQ(code, 0) << models;
  EXPECT_THAT(models, HasSubstr("tiny"));
  auto [routed, route_code] = Cli("route --server " + address_ + " --model tiny --layer 1 --tokens 3");
  EXPECT_EQ(route_code, 0) << routed;
  EXPECT_THAT(routed, HasSubstr("rerouted"));
  auto [stats, stats_code] = Cli("stats --server " + address_ + " --model tiny");
  EXPECT_EQ(stats_code, 0) << stats;
  EXPECT_THAT(stats, HasSubstr("hit rate"));
  testing::TempDir dir;
  auto [fetched, fetch_code] = Cli("fetch --server " + address_ + " --model tiny --layer 0 --expert 3 --out " +
                                   dir.File("e.safetensors"));
  EXPECT_EQ(fetch_code, 0) << fetched;
  EXPECT_THAT(fetched, HasSubstr("checksums verified"));
  auto header = ReadSafetensorsHeader(dir.File("e.safetensors"));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors.size(), 3u);
  auto [bad, bad_code] = Cli("route --server " + address_ + " --model ghost");
  EXPECT_EQ(bad_code, 1);
  EXPECT_THAT(bad, HasSubstr("no model named 'ghost'"));
}

TEST_F(ClientTest, CliPrefetch) {
  auto [queued, code] = Cli("prefetch --server " + address_ + " --model tiny --layer 1 --experts 6,7");
  EXPECT_EQ(code, 0) << queued;
  EXPECT_THAT(queued, HasSubstr("queued            6 7\n"));
  EXPECT_THAT(queued, HasSubstr("already resident  -\n"));
  auto [typo, typo_code] = Cli("prefetch --server " + address_ + " --model tiny --experts 1,x");
  EXPECT_EQ(typo_code, 2);
  EXPECT_THAT(typo, HasSubstr("'x' is not an expert number"));
  auto [range, range_code] = Cli("prefetch --server " + address_ + " --model tiny --experts 8");
  EXPECT_EQ(range_code, 1);
  EXPECT_THAT(range, HasSubstr("expert 8"));
}

}  // namespace
}  // namespace moe_router
