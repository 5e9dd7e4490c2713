// The Python package's native engine (moe_router._engine, Debian's
// /usr/bin/python3) against the C++ InProcessWorker, step by step, on the
// real server; and its control stream.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "client/in_process_worker.h"
#include "core/base/file_io.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
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
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.health_listen = "";
  auto server = RouterServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  for (const char* name : {"cpp", "py"}) {
    v1::ModelSpec spec = testing::SyntheticSpec(name, 4, kExpertBytes, 32);
    spec.set_prefetch_next_layer(0);
    spec.mutable_router()->set_prefetch_threshold(0);
    ASSERT_TRUE((*server)->registry().Register(spec).ok());
  }
  const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
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

}  // namespace
}  // namespace moe_router
