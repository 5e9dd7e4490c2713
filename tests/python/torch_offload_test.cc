// The Python package's pytest suites (torch_offload_test.py, torch_layouts_test.py,
// worker_cache_test.py) on Debian's /usr/bin/python3 and torch, with a real
// moe-routerd on 127.0.0.1:0 for the fleet tests and the CLI for reading
// recorded traces.
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/testing/local_server.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

TEST(TorchOffloadTest, PytestSuitePasses) {
  auto server = testing::StartLocalServer();
  ASSERT_NE(server, nullptr);
  const testing::CommandResult run = testing::RunCommand(
      absl::StrCat("cd ", TESTS_DIR, " && PYTHONPATH=", PY_PACKAGE_DIR,
                   " MOE_ROUTER_SERVER=127.0.0.1:", server->port(), " MOE_ROUTER_CLI=", CLI_PATH,
                   " /usr/bin/python3 -m pytest -q -rs -p no:cacheprovider torch_offload_test.py",
                   " torch_layouts_test.py worker_cache_test.py 2>&1"));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  // With the server here, every test runs: none may skip.
  EXPECT_EQ(run.output.find("skipped"), std::string::npos) << run.output;

  // The fleet test taught "tiny-taught" through two offloaded models' Learn
  // streams and "tiny-remote" by routing the same gate logits remotely: the
  // model learned the same, exactly (both learn without decay; up to the
  // rounding of summing in another order). The second worker starts at once
  // after the first: it routes with what the fleet learned from the start.
  auto taught = server->registry().Find("tiny-taught");
  auto remote = server->registry().Find("tiny-remote");
  ASSERT_TRUE(taught.ok()) << taught.status();
  ASSERT_TRUE(remote.ok()) << remote.status();
  const auto a = nlohmann::json::parse((*taught)->engine->ExportState());
  const auto b = nlohmann::json::parse((*remote)->engine->ExportState());
  ASSERT_EQ(a["layers"].size(), 4u);
  ASSERT_EQ(b["layers"].size(), 4u);
  for (size_t l = 0; l < 4; ++l) {
    SCOPED_TRACE(absl::StrCat("layer ", l));
    const auto& x = a["layers"][l];
    const auto& y = b["layers"][l];
    EXPECT_GT(x["tokens"].get<uint64_t>(), 0u);
    EXPECT_EQ(x["tokens"], y["tokens"]);
    EXPECT_EQ(x["activation_counts"], y["activation_counts"]);
    const auto near = [](const nlohmann::json& u, const nlohmann::json& v, const char* what) {
      SCOPED_TRACE(what);
      ASSERT_EQ(u.size(), v.size());
      for (size_t i = 0; i < u.size(); ++i) {
        const double p = u[i].get<double>(), q = v[i].get<double>();
        EXPECT_NEAR(p, q, 1e-9 * std::max(std::abs(p), std::abs(q)) + 1e-12) << "entry " << i;
      }
    };
    near(x["affinity_scores"], y["affinity_scores"], "affinity_scores");
    near(nlohmann::json::array({x["mean_logit_range"]}),
         nlohmann::json::array({y["mean_logit_range"]}), "mean_logit_range");
    EXPECT_EQ(x.contains("coactivation"), y.contains("coactivation"));
    if (x.contains("coactivation")) near(x["coactivation"], y["coactivation"], "coactivation");
  }
}

}  // namespace
}  // namespace moe_router
