// A Python client (Debian's python3-grpcio, stubs from grpc_python_plugin)
// gets the same routing as the C++ client from the same server.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

TEST(InteropTest, PythonClientRoutesLikeTheCppClient) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  auto server = RouterServer::Start(options);
  ASSERT_TRUE(server.ok());
  v1::ModelSpec spec = testing::SyntheticSpec("tiny", 2, 1000, 8);
  // The first call pages experts in; without the residency bonus the second
  // call's routing cannot depend on that.
  spec.mutable_router()->set_disable_memory_aware(true);
  ASSERT_TRUE((*server)->registry().Register(spec).ok());
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());
  const std::vector<float> logits = testing::RandomLogits(5, 8, 42);

  auto client = *Client::Connect(address);
  auto cpp = client->Route("tiny", 0, logits);
  ASSERT_TRUE(cpp.ok()) << cpp.status();

  std::string command =
      absl::StrCat("/usr/bin/python3 ", PY_CLIENT, " ", PY_STUB_DIR, " ", address, " tiny 0");
  // %.9g round-trips a float exactly, so both clients send the same bits.
  for (float x : logits) absl::StrAppend(&command, absl::StrFormat(" %.9g", x));
  const testing::CommandResult python = testing::RunCommand(command);
  ASSERT_EQ(python.exit_code, 0) << python.output;
  const nlohmann::json py = nlohmann::json::parse(python.output, nullptr, false);
  ASSERT_FALSE(py.is_discarded()) << python.output;
  ASSERT_EQ(py["experts"].size(), static_cast<size_t>(cpp->experts_size()));
  for (int i = 0; i < cpp->experts_size(); ++i) {
    EXPECT_EQ(py["experts"][i].get<uint32_t>(), cpp->experts(i));
    // The same request gets the same float back, bit for bit.
    EXPECT_EQ(static_cast<float>(py["weights"][i].get<double>()), cpp->weights(i));
  }
}

}  // namespace
}  // namespace moe_router
