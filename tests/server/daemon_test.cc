// moe-routerd as a real process: serves the embedded default, drains on
// SIGTERM with exit 0, and leaves its learned state behind.
#include "tests/testing/daemon.h"

#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/in_process_worker.h"
#include "core/base/file_io.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "proto/grpc_status.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// moe-routerd as a child process.
class Daemon : public testing::Daemon {
 public:
  explicit Daemon(const std::vector<std::string>& args) : testing::Daemon(MOE_ROUTERD_PATH, args) {}
};

TEST(DaemonTest, ServesTheDefaultAndDrainsOnSigterm) {
  testing::TempDir dir;
  Daemon d({"--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0", "--health_listen=127.0.0.1:0",
            "--state_dir=" + dir.path(), "--drain_timeout=5s"});
  ASSERT_GT(d.port(), 0);
  auto stub =
      v1::MoeRouter::NewStub(grpc::CreateChannel(d.address(), grpc::InsecureChannelCredentials()));
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
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(
      grpc::CreateChannel(d.address(), grpc::InsecureChannelCredentials()));
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
  EXPECT_THAT(services,
              ::testing::IsSupersetOf({"moe_router.v1.MoeRouter", "grpc.health.v1.Health"}));
  EXPECT_TRUE(stream->Finish().ok());

  ASSERT_EQ(kill(d.pid(), SIGTERM), 0);
  const std::optional<int> status = d.WaitForExit(absl::Seconds(30));
  ASSERT_TRUE(status.has_value()) << "still running 30 s after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_TRUE(std::filesystem::exists(dir.File("mixtral-8x7b.state.json")));
}

grpc::health::v1::HealthCheckResponse::ServingStatus Readiness(
    grpc::health::v1::Health::Stub& health) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("readiness");
  grpc::health::v1::HealthCheckResponse response;
  if (!health.Check(&ctx, request, &response).ok()) return response.UNKNOWN;
  return response.status();
}

// SIGTERM with a RouteStream and a FetchExpert open. During the notice
// readiness is NOT_SERVING and everything is still served; a second SIGTERM
// ends the notice. Then the drain: the idle stream ends with the draining
// status, a new call is refused (marked safe to retry) while the fetch is
// still streaming, the fetch, held unread for longer than the graceful
// shutdown's second, completes in full, and the daemon exits 0 only then,
// long before its drain timeout (it waits for the calls, not the timeout).
TEST(DaemonTest, SigtermDrainsOpenCallsThenExits) {
  testing::TempDir dir;
  // 64 MiB experts: 64 chunks, far more than flow control lets the server
  // send ahead, so the fetch stays open until the client reads it.
  constexpr uint64_t kExpertBytes = 64ull << 20;
  ASSERT_TRUE(WriteFileAtomically(
                  dir.File("c.json"),
                  absl::StrFormat(R"({"models":[{"name":"big","numLayers":2,"numExperts":8,)"
                                  R"("topK":2,"budgetBytes":%d,"synthetic":{"expertBytes":%d}}]})",
                                  2 * kExpertBytes, kExpertBytes))
                  .ok());
  constexpr absl::Duration kTimeout = absl::Seconds(120);
  Daemon d({"--listen=127.0.0.1:0", "--metrics_listen=", "--health_listen=127.0.0.1:0",
            "--config=" + dir.File("c.json"), "--drain_notice=" + absl::FormatDuration(kTimeout),
            "--drain_timeout=" + absl::FormatDuration(kTimeout)});
  ASSERT_GT(d.port(), 0);
  ASSERT_GT(d.health_port(), 0);
  auto channel = grpc::CreateChannel(d.address(), grpc::InsecureChannelCredentials());
  auto stub = v1::MoeRouter::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(d.health_port()), grpc::InsecureChannelCredentials()));
  ASSERT_EQ(Readiness(*health), grpc::health::v1::HealthCheckResponse::SERVING);

  const auto route_request = [](uint32_t layer) {
    v1::RouteTokensRequest request;
    request.set_model("big");
    request.set_layer(layer);
    const std::vector<float> logits = testing::RandomLogits(4, 8, layer);
    request.mutable_gate_logits()->Add(logits.begin(), logits.end());
    return request;
  };
  grpc::ClientContext stream_ctx;
  auto stream = stub->RouteStream(&stream_ctx);
  v1::RouteTokensResponse routed;
  ASSERT_TRUE(stream->Write(route_request(0)));
  ASSERT_TRUE(stream->Read(&routed));

  grpc::ClientContext fetch_ctx;
  v1::FetchExpertRequest fetch;
  fetch.set_model("big");
  fetch.set_layer(1);
  fetch.set_expert(5);
  auto reader = stub->FetchExpert(&fetch_ctx, fetch);
  v1::ExpertChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));  // the expert is loaded and streaming
  uint64_t received = chunk.data().size();

  const absl::Time sigterm = absl::Now();
  ASSERT_EQ(kill(d.pid(), SIGTERM), 0);
  const absl::Time deadline = sigterm + absl::Seconds(30);
  while (Readiness(*health) != grpc::health::v1::HealthCheckResponse::NOT_SERVING) {
    ASSERT_LT(absl::Now(), deadline) << "readiness never went NOT_SERVING";
    absl::SleepFor(absl::Milliseconds(10));
  }
  // The notice: still serving everything.
  ASSERT_TRUE(stream->Write(route_request(1)));
  ASSERT_TRUE(stream->Read(&routed));
  EXPECT_EQ(routed.tokens(), 4u);
  for (int i = 0; i < 8 && reader->Read(&chunk); ++i) received += chunk.data().size();

  ASSERT_EQ(kill(d.pid(), SIGTERM), 0);  // the drain, now
  EXPECT_FALSE(stream->Read(&routed));
  const grpc::Status ended = stream->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(ended.error_message(), HasSubstr("draining"));

  // The fetch keeps the process up; a new call is refused, marked for retry.
  grpc::ClientContext refused_ctx;
  v1::RouteTokensResponse unused;
  const grpc::Status refused = stub->RouteTokens(&refused_ctx, route_request(0), &unused);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(refused_ctx.GetServerTrailingMetadata().count(kRefusedTrailer), 1u);

  ASSERT_LT(received, kExpertBytes);  // the fetch spans the drain
  // Held open unread past the graceful shutdown's second: the drain waits
  // for it, not for gRPC's grace (which would cancel it), and the daemon
  // does not exit while it is open.
  absl::SleepFor(absl::Seconds(2.5));
  ASSERT_FALSE(d.WaitForExit(absl::ZeroDuration()).has_value())
      << "the daemon exited with a call open";
  while (reader->Read(&chunk)) received += chunk.data().size();
  const grpc::Status fetched = reader->Finish();
  EXPECT_TRUE(fetched.ok()) << fetched.error_message();
  EXPECT_EQ(received, kExpertBytes);

  const std::optional<int> status = d.WaitForExit(kTimeout);
  ASSERT_TRUE(status.has_value()) << "still running after the drain timeout";
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_LT(absl::Now() - sigterm, kTimeout);
}

TEST(DaemonTest, PlaintextReachableFromOtherMachinesIsWarnedAbout) {
  Daemon exposed({"--listen=0.0.0.0:0", "--metrics_listen=", "--health_listen="});
  ASSERT_GT(exposed.port(), 0);
  EXPECT_THAT(exposed.log(),
              HasSubstr("WARNING: serving plaintext on 0.0.0.0:0, which other machines can reach"));
  Daemon local({"--listen=127.0.0.1:0", "--metrics_listen=", "--health_listen="});
  ASSERT_GT(local.port(), 0);
  EXPECT_THAT(local.log(), Not(HasSubstr("WARNING")));
  EXPECT_THAT(local.log(), HasSubstr("models may reserve"));
}

// kill -9 while routing: what the restarted daemon learned from is the
// last snapshot taken while serving (saved every --snapshot_interval), not
// a fresh start; and it serves again.
TEST(DaemonTest, KillNineThenRestartLoadsTheLastSnapshot) {
  testing::TempDir dir;
  const std::vector<std::string> args = {
      "--listen=127.0.0.1:0", "--metrics_listen=", "--health_listen=", "--state_dir=" + dir.path(),
      "--snapshot_interval=50ms"};
  const std::string state = dir.File("mixtral-8x7b.state.json");
  std::string snapshot;
  {
    Daemon d(args);
    ASSERT_GT(d.port(), 0);
    auto stub = v1::MoeRouter::NewStub(
        grpc::CreateChannel(d.address(), grpc::InsecureChannelCredentials()));
    const auto route = [&](uint32_t layer, uint64_t seed) {
      grpc::ClientContext ctx;
      v1::RouteTokensRequest request;
      request.set_model("mixtral-8x7b");
      request.set_layer(layer);
      const std::vector<float> logits = testing::RandomLogits(16, 8, seed);
      request.mutable_gate_logits()->Add(logits.begin(), logits.end());
      v1::RouteTokensResponse response;
      return stub->RouteTokens(&ctx, request, &response).ok();
    };
    for (uint32_t i = 0; i < 64; ++i) ASSERT_TRUE(route(i % 32, i));
    // A snapshot holding that learning lands; then more routing, and kill -9
    // with whatever is in flight.
    ASSERT_TRUE(testing::WaitFor([&] {
      const absl::StatusOr<std::string> saved = ReadFile(state);
      // Every layer has learned (a layer's object ends with its token count).
      return saved.ok() && saved->find("\"tokens\":0}") == std::string::npos;
    }));
    for (uint32_t i = 0; i < 64; ++i) ASSERT_TRUE(route(i % 32, 100 + i));
    ASSERT_EQ(kill(d.pid(), SIGKILL), 0);
    ASSERT_TRUE(d.WaitForExit(absl::Seconds(30)).has_value());
    snapshot = *ReadFile(state);
  }
  Daemon restarted(args);
  ASSERT_GT(restarted.port(), 0);
  EXPECT_THAT(restarted.log(), Not(HasSubstr("ignoring saved state")));
  // Saved again at once on SIGTERM with no traffic: what it loaded.
  ASSERT_EQ(kill(restarted.pid(), SIGTERM), 0);
  ASSERT_TRUE(restarted.WaitForExit(absl::Seconds(30)).has_value());
  EXPECT_EQ(*ReadFile(state), snapshot);
}

TEST(DaemonTest, HelpListsItsOwnFlags) {
  const testing::CommandResult r = testing::RunCommand(std::string(MOE_ROUTERD_PATH) + " --help");
  // Abseil's --help exits 1 after printing, by its own convention.
  EXPECT_THAT(r.output, HasSubstr("the moe-router service"));
  EXPECT_THAT(r.output, HasSubstr("--drain_notice"));
  EXPECT_THAT(r.output, HasSubstr("--listen"));
  EXPECT_THAT(r.output, Not(HasSubstr("No flags matched")));
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

// moe-routerd as a real process serving its embedded default, and an
// in-process worker routing against it with 16 experts' worth of budget.
class InProcessDaemonTest : public ::testing::Test {
 protected:
  void Start(absl::Duration report_interval, uint32_t max_pending_reports) {
    daemon_ = std::make_unique<Daemon>(
        std::vector<std::string>{"--listen=127.0.0.1:0", "--health_listen=", "--metrics_listen="});
    ASSERT_GT(daemon_->port(), 0) << daemon_->log();
    port_ = daemon_->port();
    address_ = daemon_->address();
    auto client = Client::Connect(address_);
    ASSERT_TRUE(client.ok());
    client_ = *std::move(client);
    auto spec = client_->FindModel("mixtral-8x7b");
    ASSERT_TRUE(spec.ok()) << spec.status();
    spec_ = *spec;
    budget_ = 16 * spec_.synthetic().expert_bytes();
    auto worker =
        InProcessWorker::Start(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()),
                               {.model = "mixtral-8x7b",
                                .cache = "w",
                                .budget_bytes = budget_,
                                .report_interval = report_interval,
                                .connect_timeout = absl::Milliseconds(500),
                                .max_backoff = absl::Milliseconds(200),
                                .max_pending_reports = max_pending_reports});
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
  }

  std::unique_ptr<Daemon> daemon_;
  int port_ = 0;
  std::string address_;
  std::unique_ptr<Client> client_;
  v1::ModelSpec spec_;
  uint64_t budget_ = 0;
  std::unique_ptr<InProcessWorker> worker_;
};

// An in-process worker against moe-routerd as a real process: stopped
// (SIGSTOP), then killed (SIGKILL) and restarted on its port. No routing
// call fails or waits; after each, every token reaches the service and its
// view of the worker is what the worker holds.
TEST_F(InProcessDaemonTest, RoutesThroughAStalledAndAKilledDaemon) {
  ASSERT_NO_FATAL_FAILURE(Start(absl::Milliseconds(20), 64));
  WorkerStep step;
  uint64_t tokens = 0;
  const auto route_some = [&](uint64_t seed) {
    for (uint32_t b = 0; b < 40; ++b) {
      for (uint32_t l = 0; l < spec_.num_layers(); ++l) {
        const std::vector<float> logits = testing::RandomLogits(2, 8, seed + b * 64 + l);
        ASSERT_TRUE(worker_->engine().Route(l, logits, &step).ok());
        tokens += 2;
      }
    }
  };
  const auto service_sees_the_worker = [&](Client& service) {
    ASSERT_TRUE(worker_->Flush(absl::Seconds(30)));
    auto view = service.OpenCache("mixtral-8x7b", "w", budget_);
    ASSERT_TRUE(view.ok()) << view.status();
    std::vector<std::pair<uint32_t, uint32_t>> held, seen;
    for (const auto& [key, variant] : worker_->engine().Residency()) {
      held.emplace_back(key.layer, key.expert);
    }
    for (const v1::ExpertRef& r : view->resident()) seen.emplace_back(r.layer(), r.expert());
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, held);
  };
  route_some(1);
  // Stalled: the worker routes on; its reports wait.
  ASSERT_EQ(kill(daemon_->pid(), SIGSTOP), 0);
  route_some(1000);
  ASSERT_EQ(kill(daemon_->pid(), SIGCONT), 0);
  service_sees_the_worker(*client_);
  auto stats = client_->Stats("mixtral-8x7b");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->routed_tokens(), tokens);

  // Killed: the worker routes on, then finds the restarted daemon, states
  // what it holds and resends what was not acknowledged.
  ASSERT_EQ(kill(daemon_->pid(), SIGKILL), 0);
  daemon_.reset();
  route_some(2000);
  const uint64_t connects = worker_->control_stats().connects;
  Daemon restarted(
      {absl::StrFormat("--listen=127.0.0.1:%d", port_), "--health_listen=", "--metrics_listen="});
  ASSERT_EQ(restarted.port(), port_) << restarted.log();
  ASSERT_TRUE(testing::WaitFor([&] { return worker_->control_stats().connects > connects; }));
  auto again = Client::Connect(address_);
  ASSERT_TRUE(again.ok());
  service_sees_the_worker(**again);
  auto after = (*again)->Stats("mixtral-8x7b");
  ASSERT_TRUE(after.ok());
  EXPECT_GT(after->routed_tokens(), 0u);
  EXPECT_EQ(worker_->control_stats().reports_dropped, 0u);
}

// Reports written to a stalled daemon and never acknowledged are kept for
// resending up to the bound; past it the oldest are dropped and counted,
// and when the stalled daemon is then killed they are lost: the restarted
// one gets the kept ones and everything after, not all.
TEST_F(InProcessDaemonTest, DropsTheOldestUnacknowledgedReportsPastTheBound) {
  ASSERT_NO_FATAL_FAILURE(Start(absl::Milliseconds(5), 2));
  WorkerStep step;
  uint64_t tokens = 0;
  const auto route = [&] {
    for (uint32_t l = 0; l < spec_.num_layers(); ++l) {
      EXPECT_TRUE(
          worker_->engine().Route(l, testing::RandomLogits(1, 8, tokens * 64 + l), &step).ok());
    }
    ++tokens;
  };
  ASSERT_EQ(kill(daemon_->pid(), SIGSTOP), 0);
  ASSERT_TRUE(testing::WaitFor([&] {
    route();
    absl::SleepFor(absl::Milliseconds(1));
    return worker_->control_stats().reports_dropped >= 3;
  }));
  const uint64_t stalled_tokens = tokens;
  ASSERT_EQ(kill(daemon_->pid(), SIGKILL), 0);
  daemon_.reset();
  for (int i = 0; i < 20; ++i) route();
  Daemon restarted(
      {absl::StrFormat("--listen=127.0.0.1:%d", port_), "--health_listen=", "--metrics_listen="});
  ASSERT_EQ(restarted.port(), port_) << restarted.log();
  ASSERT_TRUE(worker_->Flush(absl::Seconds(30)));
  auto again = Client::Connect(address_);
  ASSERT_TRUE(again.ok());
  auto stats = (*again)->Stats("mixtral-8x7b");
  ASSERT_TRUE(stats.ok());
  // Routed tokens count each token once per layer.
  const uint64_t layers = spec_.num_layers();
  EXPECT_GE(stats->routed_tokens(), (tokens - stalled_tokens) * layers);
  EXPECT_LT(stats->routed_tokens(), tokens * layers);
  EXPECT_GE(worker_->control_stats().reports_dropped, 3u);
}

}  // namespace
}  // namespace moe_router
