// Every routing rule on the paths a worker routes by: RouteTokens on the
// real server and the in-process engine of an InProcessWorker learning from
// it. At bonus 0 both give, token by token and bit for bit, the rule's own
// experts and weights (the brute-force reference of
// tests/testing/rule_reference.cc) with the layer's own biases.
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/in_process_worker.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/proto_to_core.h"
#include "server/server.h"
#include "tests/testing/local_server.h"
#include "tests/testing/rule_reference.h"
#include "tests/testing/test_specs.h"

namespace moe_router {
namespace {

using testing::NamedTestRule;
using testing::RouteByRule;
using testing::RuleChoice;

constexpr uint32_t kLayers = 2;
constexpr uint64_t kExpertBytes = 1024;

class RulePathsTest : public ::testing::TestWithParam<NamedTestRule> {
 protected:
  void SetUp() override {
    server_ = testing::StartLocalServer();
    ASSERT_NE(server_, nullptr);
    auto client = Client::Connect(absl::StrCat("127.0.0.1:", server_->port()));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  // The rule's model: its shape, each layer's biases, no bonus.
  v1::ModelSpec Spec(const NamedTestRule& c, const std::vector<float>& bias) {
    v1::ModelSpec spec = testing::SyntheticSpec("m", kLayers, kExpertBytes, 4 * c.num_experts);
    spec.set_num_experts(c.num_experts);
    spec.set_top_k(c.top_k);
    spec.mutable_router()->set_cache_bonus(0);
    *spec.mutable_routing() = SettingsFromRule(c.rule, bias);
    return spec;
  }

  std::unique_ptr<RouterServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_P(RulePathsTest, ServiceAndInProcessEngineRouteByTheRule) {
  const NamedTestRule& c = GetParam();
  const uint32_t n = c.num_experts, k = c.top_k, tokens = 40;
  std::mt19937 rng(5);
  std::vector<float> bias;
  if (c.rule.choice_bias) {
    std::normal_distribution<float> normal(0.0f, 0.3f);
    bias.resize(size_t{kLayers} * n);
    for (float& b : bias) b = normal(rng);
  }
  ASSERT_TRUE(client_->Register(Spec(c, bias)).ok());
  auto worker =
      InProcessWorker::Start(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                                 grpc::InsecureChannelCredentials()),
                             {.model = "m", .cache = "w", .budget_bytes = 4 * n * kExpertBytes});
  ASSERT_TRUE(worker.ok()) << worker.status();
  WorkerStep step;
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    const std::vector<float> logits = testing::RuleTestLogits(rng, tokens, n, layer == 1);
    const auto layer_bias =
        bias.empty() ? absl::Span<const float>() : absl::MakeConstSpan(bias).subspan(layer * n, n);
    auto remote = client_->Route("m", layer, logits);
    ASSERT_TRUE(remote.ok()) << remote.status();
    ASSERT_TRUE((*worker)->engine().Route(layer, logits, &step).ok());
    for (uint32_t t = 0; t < tokens; ++t) {
      const RuleChoice want =
          RouteByRule(c.rule, k, absl::MakeConstSpan(logits).subspan(size_t{t} * n, n), layer_bias);
      for (uint32_t i = 0; i < k; ++i) {
        const size_t at = size_t{t} * k + i;
        ASSERT_EQ(remote->experts(static_cast<int>(at)), want.experts[i])
            << c.name << " service, layer " << layer << " token " << t;
        ASSERT_EQ(remote->weights(static_cast<int>(at)), want.weights[i]) << c.name;
        ASSERT_EQ(step.batch.experts[at], want.experts[i])
            << c.name << " in-process, layer " << layer << " token " << t;
        ASSERT_EQ(step.batch.weights[at], want.weights[i]) << c.name;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Rules, RulePathsTest, ::testing::ValuesIn(testing::RuleTestCases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace moe_router
