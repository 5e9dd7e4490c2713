// The Python package's native engine (moe_router._engine, Debian's
// /usr/bin/python3) against the C++ InProcessWorker, step by step, on the
// real server; and its control stream.
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "client/in_process_worker.h"
#include "core/base/file_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "tests/testing/local_server.h"
#include "tests/testing/rule_reference.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

constexpr uint64_t kExpertBytes = 1000;
constexpr uint32_t kTokens = 4;

nlohmann::json KeysJson(const std::vector<ExpertKey>& keys) {
  nlohmann::json out = nlohmann::json::array();
  for (const ExpertKey& k : keys) out.push_back({k.layer, k.expert});
  return out;
}

TEST(PythonEngineTest, NativeModuleDecidesAsTheCppEngineAndReportsOverItsStream) {
  auto server = testing::StartLocalServer();
  ASSERT_NE(server, nullptr);
  for (const char* name : {"cpp", "py"}) {
    v1::ModelSpec spec = testing::SyntheticSpec(name, 4, kExpertBytes, 32);
    spec.set_prefetch_next_layer(0);
    spec.mutable_router()->set_prefetch_threshold(0);
    ASSERT_TRUE(server->registry().Register(spec).ok());
  }
  const std::string address = absl::StrCat("127.0.0.1:", server->port());
  const uint64_t budget = 8 * kExpertBytes;
  nlohmann::json steps = nlohmann::json::array();
  std::vector<std::vector<float>> logits;
  for (uint32_t i = 0; i < 60; ++i) {
    logits.push_back(testing::RandomLogits(kTokens, 8, 1000 + i));
    steps.push_back({i % 4, logits.back()});
  }
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.File("steps.json"), steps.dump()).ok());
  const testing::CommandResult python = testing::RunCommand(
      absl::StrCat("/usr/bin/python3 ", PY_ENGINE_SCRIPT, " ", PY_PACKAGE_DIR, " ", address,
                   " py w ", budget, " ", kTokens, " ", dir.File("steps.json")));
  ASSERT_EQ(python.exit_code, 0) << python.output;
  std::vector<nlohmann::json> lines;
  for (absl::string_view line : absl::StrSplit(python.output, '\n', absl::SkipEmpty())) {
    if (line.front() == '{') lines.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(lines.size(), steps.size() + 1) << python.output;

  auto cpp =
      InProcessWorker::Start(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()),
                             {.model = "cpp",
                              .cache = "w",
                              .budget_bytes = budget,
                              .report_interval = absl::Milliseconds(20)});
  ASSERT_TRUE(cpp.ok()) << cpp.status();
  WorkerStep step;
  uint64_t evictions = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    ASSERT_TRUE((*cpp)->engine().Route(i % 4, logits[i], &step).ok());
    const nlohmann::json& py = lines[i];
    ASSERT_EQ(py["experts"], nlohmann::json(step.batch.experts)) << "step " << i;
    ASSERT_EQ(py["weights"], nlohmann::json(step.batch.weights));
    ASSERT_EQ(py["resident"], nlohmann::json(step.batch.resident));  // 0 or 1, uint8
    ASSERT_EQ(py["evictions"], KeysJson(step.cache.evictions));
    ASSERT_EQ(py["urgent"], KeysJson(step.cache.urgent));
    ASSERT_EQ(py["prefetch"], KeysJson(step.cache.prefetch));
    evictions += step.cache.evictions.size();
  }
  EXPECT_GT(evictions, 0u);
  // The Python worker's stream carried every token to the service, and the
  // service's view of it is what it held.
  const nlohmann::json& last = lines.back();
  EXPECT_GE(last["control"]["reports_sent"].get<uint64_t>(), 1u);
  EXPECT_GT(last["control"]["bytes_up"].get<uint64_t>(), 0u);
  EXPECT_GT(last["control"]["updates_received"].get<uint64_t>(), 0u);
  auto client = Client::Connect(address);
  ASSERT_TRUE(client.ok());
  auto stats = (*client)->Stats("py");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->routed_tokens(), uint64_t{kTokens} * logits.size());
  auto view = (*client)->OpenCache("py", "w", budget);
  ASSERT_TRUE(view.ok());
  nlohmann::json held = nlohmann::json::array();
  for (const v1::ExpertRef& r : view->resident()) held.push_back({r.layer(), r.expert()});
  EXPECT_EQ(last["residency"], held);
}

// The native LocalEngine routes by every rule as the rule itself does:
// experts and weights bit for bit, the layer's own biases; and refuses a
// setting it does not know by name.
TEST(PythonEngineTest, LocalEngineRoutesByEveryRule) {
  nlohmann::json cases = nlohmann::json::array();
  std::mt19937 rng(17);
  const uint32_t layers = 2, tokens = 24;
  struct Expected {
    std::vector<uint32_t> experts;
    std::vector<float> weights;
  };
  std::vector<Expected> expected;
  for (const testing::NamedTestRule& c : testing::RuleTestCases()) {
    const uint32_t n = c.num_experts;
    std::vector<float> bias;
    if (c.rule.choice_bias) {
      std::normal_distribution<float> normal(0.0f, 0.3f);
      bias.resize(size_t{layers} * n);
      for (float& b : bias) b = normal(rng);
    }
    nlohmann::json routing = {{"score", ScoreFunctionName(c.rule.score)},
                              {"choice_bias", c.rule.choice_bias},
                              {"selection", SelectionName(c.rule.selection)},
                              {"num_groups", c.rule.num_groups},
                              {"kept_groups", c.rule.kept_groups},
                              {"group_score", GroupScoreName(c.rule.group_score)},
                              {"masked_groups", MaskedGroupsName(c.rule.masked_groups)},
                              {"normalization", NormalizationName(c.rule.normalization)},
                              {"normalization_param", c.rule.normalization_param},
                              {"scaling", c.rule.scaling}};
    nlohmann::json calls = nlohmann::json::array();
    for (uint32_t layer = 0; layer < layers; ++layer) {
      const std::vector<float> logits = testing::RuleTestLogits(rng, tokens, n, layer == 1);
      nlohmann::json rows = nlohmann::json::array();
      Expected e;
      for (uint32_t t = 0; t < tokens; ++t) {
        const auto row = absl::MakeConstSpan(logits).subspan(size_t{t} * n, n);
        rows.push_back(std::vector<float>(row.begin(), row.end()));
        const auto want = testing::RouteByRule(
            c.rule, c.top_k, row,
            bias.empty() ? absl::Span<const float>()
                         : absl::MakeConstSpan(bias).subspan(size_t{layer} * n, n));
        e.experts.insert(e.experts.end(), want.experts.begin(), want.experts.end());
        e.weights.insert(e.weights.end(), want.weights.begin(), want.weights.end());
      }
      calls.push_back({layer, rows});
      expected.push_back(std::move(e));
    }
    cases.push_back({{"name", c.name},
                     {"routing", routing},
                     {"bias", bias.empty() ? nlohmann::json(nullptr) : nlohmann::json(bias)},
                     {"layers", layers},
                     {"experts", n},
                     {"top_k", c.top_k},
                     {"logits", calls}});
  }
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.File("cases.json"), cases.dump()).ok());
  const testing::CommandResult python = testing::RunCommand(absl::StrCat(
      "/usr/bin/python3 ", PY_RULES_SCRIPT, " ", PY_PACKAGE_DIR, " ", dir.File("cases.json")));
  ASSERT_EQ(python.exit_code, 0) << python.output;
  std::vector<nlohmann::json> lines;
  for (absl::string_view line : absl::StrSplit(python.output, '\n', absl::SkipEmpty())) {
    if (line.front() == '{') lines.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(lines.size(), expected.size() + 1) << python.output;
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(lines[i]["experts"].get<std::vector<uint32_t>>(), expected[i].experts)
        << lines[i]["name"];
    const std::vector<double> weights = lines[i]["weights"].get<std::vector<double>>();
    ASSERT_EQ(weights.size(), expected[i].weights.size());
    for (size_t j = 0; j < weights.size(); ++j) {
      ASSERT_EQ(weights[j], static_cast<double>(expected[i].weights[j]))
          << lines[i]["name"] << " weight " << j;
    }
  }
  EXPECT_THAT(lines.back()["refused"].get<std::string>(),
              ::testing::HasSubstr("routing: unknown setting 'groups'"));
}

}  // namespace
}  // namespace moe_router
