// moe-routerd as a real process: serves the embedded default, drains on
// SIGTERM with exit 0, and leaves its learned state behind.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "core/file_io.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

struct Daemon {
  pid_t pid = -1;
  int port = 0;
  FILE* err = nullptr;
};

// Starts moe-routerd with `args` and reads stderr up to its port line.
Daemon StartDaemon(const std::vector<std::string>& args) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  Daemon d;
  d.pid = fork();
  if (d.pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    std::vector<char*> argv = {const_cast<char*>(MOE_ROUTERD_PATH)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(MOE_ROUTERD_PATH, argv.data());
    _exit(127);
  }
  close(fds[1]);
  d.err = fdopen(fds[0], "r");
  char line[512];
  while (d.port == 0 && fgets(line, sizeof line, d.err) != nullptr) {
    std::sscanf(line, "moe-routerd: listening on port %d", &d.port);
  }
  return d;
}

TEST(DaemonTest, ServesTheDefaultAndDrainsOnSigterm) {
  testing::TempDir dir;
  Daemon d = StartDaemon({"--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                          "--health_listen=127.0.0.1:0",
                          "--state_dir=" + dir.path(),
                          "--drain_timeout=5s"});
  ASSERT_GT(d.port, 0);
  auto stub = v1::MoeRouter::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(d.port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::RouteTokensRequest request;
  request.set_model("mixtral-8x7b");
  request.set_layer(31);
  const std::vector<float> logits = testing::RandomLogits(4, 8, 1);
  request.mutable_gate_logits()->Add(logits.begin(), logits.end());
  v1::RouteTokensResponse response;
  ASSERT_TRUE(stub->RouteTokens(&ctx, request, &response).ok());
  EXPECT_EQ(response.experts_size(), 8);

  // Reflection lists the service, so grpcurl-style tools need no proto.
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(d.port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext reflection_ctx;
  auto stream = reflection->ServerReflectionInfo(&reflection_ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest list;
  list.set_list_services("");
  ASSERT_TRUE(stream->Write(list));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse listed;
  ASSERT_TRUE(stream->Read(&listed));
  std::vector<std::string> services;
  for (const auto& s : listed.list_services_response().service()) services.push_back(s.name());
  EXPECT_THAT(services, ::testing::IsSupersetOf({"moe_router.v1.MoeRouter", "grpc.health.v1.Health"}));
  EXPECT_TRUE(stream->Finish().ok());

  ASSERT_EQ(kill(d.pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(d.pid, &status, 0), d.pid);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(std::filesystem::exists(dir.File("mixtral-8x7b.state.json")));
  fclose(d.err);
}

TEST(DaemonTest, BadConfigIsFatalWithTheReason) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.File("c.json"),
                                  R"({"models":[{"name":"m","numLayers":2,"numExperts":8,)"
                                  R"("topK":9,"budgetBytes":100,"synthetic":{"expertBytes":10}}]})")
                  .ok());
  const testing::CommandResult r = testing::RunCommand(
      std::string(MOE_ROUTERD_PATH) + " --listen=127.0.0.1:0 --metrics_listen= --health_listen= " +
      "--config=" + dir.File("c.json"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, ::testing::HasSubstr("router.top_k (9) must be <= router.num_experts (8)"));
}

TEST(DaemonTest, UnreadableTlsFilesAreFatalWithTheReason) {
  testing::TempDir dir;
  const testing::CommandResult r = testing::RunCommand(
      std::string(MOE_ROUTERD_PATH) + " --listen=127.0.0.1:0 --metrics_listen= --health_listen= " +
      "--tls_cert=" + dir.File("absent.pem") + " --tls_key=" + dir.File("absent.key"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, ::testing::HasSubstr("--tls_cert: cannot open " + dir.File("absent.pem")));
}

}  // namespace
}  // namespace moe_router
