// The real server on 127.0.0.1:0, called through real channels.
#include "server/server.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/http_get.h"
#include "core/base/file_io.h"
#include "core/base/resource_name.h"
#include "core/store/checksum.h"
#include "core/store/safetensors.h"
#include "core/store/safetensors_store.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

v1::ModelSpec SmallSpec(const std::string& name) {
  return testing::SyntheticSpec(name, /*layers=*/4, /*expert_bytes=*/4096, /*budget_experts=*/16);
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "127.0.0.1:0";
    options.health_listen = "127.0.0.1:0";
    options.limits.max_tokens_per_request = 100;
    auto server = RouterServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::MoeRouter::NewStub(channel_);
  }

  grpc::Status Register(const v1::ModelSpec& spec, v1::ModelInfo* info) {
    grpc::ClientContext ctx;
    v1::RegisterModelRequest request;
    *request.mutable_spec() = spec;
    return stub_->RegisterModel(&ctx, request, info);
  }

  v1::ModelStats Stats(const std::string& model) {
    grpc::ClientContext ctx;
    v1::GetModelStatsRequest request;
    request.set_model(model);
    v1::ModelStats stats;
    EXPECT_TRUE(stub_->GetModelStats(&ctx, request, &stats).ok());
    return stats;
  }

  grpc::Status Route(const std::string& model, uint32_t layer, const std::vector<float>& logits,
                     v1::RouteTokensResponse* response) {
    grpc::ClientContext ctx;
    v1::RouteTokensRequest request;
    request.set_model(model);
    request.set_layer(layer);
    request.mutable_gate_logits()->Add(logits.begin(), logits.end());
    return stub_->RouteTokens(&ctx, request, response);
  }

  std::unique_ptr<RouterServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MoeRouter::Stub> stub_;
};

TEST_F(ServerTest, RegistersRoutesAndReportsStats) {
  v1::ModelInfo info;
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  EXPECT_TRUE(info.created());
  EXPECT_THAT(info.store(), HasSubstr("synthetic store"));
  // The same spec again is fine; another spec under the name is not.
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  EXPECT_FALSE(info.created());
  v1::ModelSpec other = SmallSpec("tiny");
  other.set_top_k(3);
  EXPECT_EQ(Register(other, &info).error_code(), grpc::StatusCode::ALREADY_EXISTS);

  v1::RouteTokensResponse routed;
  const std::vector<float> logits = {5, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 6};
  ASSERT_TRUE(Route("tiny", 1, logits, &routed).ok());
  EXPECT_EQ(routed.tokens(), 2u);
  EXPECT_THAT(routed.experts(), ::testing::ElementsAre(0u, 1u, 7u, 6u));
  ASSERT_EQ(routed.weights_size(), 4);
  EXPECT_NEAR(routed.weights(0), 1 / (1 + std::exp(-1.0)), 1e-6);
  EXPECT_THAT(routed.resident(), ::testing::ElementsAre(false, false, false, false));
  EXPECT_EQ(routed.urgent_page_ins_size(), 4);

  const v1::ModelStats stats = Stats("tiny");
  EXPECT_EQ(stats.routed_tokens(), 2u);
  ASSERT_EQ(stats.layers_size(), 4);
  EXPECT_EQ(stats.layers(1).misses(), 4u);
  EXPECT_EQ(stats.budget_bytes(), 16u * 4096);

  grpc::ClientContext list_ctx;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub_->ListModels(&list_ctx, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).spec().name(), "tiny");
}

// ListModels answers with the spec as registered: a setting given as 0
// stays given (not dropped as a default), so a client can tell.
// A replica's port is its own: a second server on it fails to start
// instead of sharing its traffic (gRPC would share it by SO_REUSEPORT).
TEST_F(ServerTest, ASecondServerOnTheSamePortFailsToStart) {
  for (int port : {server_->port(), server_->health_port()}) {
    ServerOptions options;
    options.listen = port == server_->port() ? absl::StrCat("127.0.0.1:", port) : "127.0.0.1:0";
    options.metrics_listen = "";
    options.health_listen = port == server_->port() ? "" : absl::StrCat("127.0.0.1:", port);
    auto second = RouterServer::Start(options);
    ASSERT_FALSE(second.ok());
    EXPECT_THAT(std::string(second.status().message()), HasSubstr(absl::StrCat(":", port)));
  }
}

// Plain HTTP probes on the metrics port, for load balancers that check over
// HTTP: they follow readiness and liveness as the gRPC health service does.
TEST_F(ServerTest, ReadyzAndLivezFollowTheHealthService) {
  const int port = server_->metrics_port();
  ASSERT_GT(port, 0);
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/readyz").value_or(""), "ok\n");
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/livez").value_or(""), "ok\n");
  server_->SetReady(false);  // as at the start of a drain
  const absl::StatusOr<std::string> draining = HttpGet("127.0.0.1", port, "/readyz");
  ASSERT_FALSE(draining.ok());
  EXPECT_THAT(std::string(draining.status().message()), HasSubstr("503 Service Unavailable"));
  EXPECT_TRUE(HttpGet("127.0.0.1", port, "/livez").ok());
  // /metrics is served as before.
  EXPECT_THAT(HttpGet("127.0.0.1", port, "/metrics").value_or(""),
              HasSubstr("moe_router_memory_limit_bytes"));
  server_->SetReady(true);
  EXPECT_TRUE(HttpGet("127.0.0.1", port, "/readyz").ok());
}

TEST_F(ServerTest, ListModelsEchoesTheSpecAsRegistered) {
  v1::ModelSpec spec = SmallSpec("zeroes");
  spec.set_prefetch_next_layer(0);
  spec.mutable_router()->set_min_gate_mass(0);
  spec.mutable_precision()->set_warmup_tokens(0);
  spec.mutable_targets()->set_min_hit_rate(0);
  v1::ModelInfo info;
  ASSERT_TRUE(Register(spec, &info).ok());
  grpc::ClientContext ctx;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub_->ListModels(&ctx, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  const v1::ModelSpec& echoed = list.models(0).spec();
  EXPECT_EQ(echoed.SerializeAsString(), spec.SerializeAsString());
  EXPECT_TRUE(echoed.has_prefetch_next_layer());
  EXPECT_TRUE(echoed.router().has_min_gate_mass());
  EXPECT_TRUE(echoed.targets().has_min_hit_rate());
  EXPECT_FALSE(echoed.router().has_cache_bonus());
}

TEST_F(ServerTest, ErrorsAreClearStatuses) {
  v1::ModelInfo info;
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  v1::RouteTokensResponse routed;
  grpc::Status s = Route("tiny", 0, std::vector<float>(7, 0.0f), &routed);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("not a multiple of num_experts (8)"));
  s = Route("tiny", 9, std::vector<float>(8, 0.0f), &routed);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("layer 9 is out of range"));
  std::vector<float> nan_logits(16, 0.0f);
  nan_logits[12] = std::nanf("");
  s = Route("tiny", 0, nan_logits, &routed);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("token 1 has a NaN"));
  EXPECT_EQ(Route("", 0, std::vector<float>(8, 0.0f), &routed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Route("nope", 0, std::vector<float>(8, 0.0f), &routed).error_code(),
            grpc::StatusCode::NOT_FOUND);
  s = Route("tiny", 0, std::vector<float>(8 * 101, 0.0f), &routed);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("101 tokens"));
  v1::ModelSpec bad = SmallSpec("bad");
  bad.set_top_k(0);
  s = Register(bad, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("router.top_k"));
  bad = SmallSpec("bad");
  bad.clear_store();
  EXPECT_THAT(Register(bad, &info).error_message(), HasSubstr("model.store"));
  // Nothing was routed by the failed calls, and nothing registered.
  EXPECT_EQ(Stats("tiny").routed_tokens(), 0u);
  grpc::ClientContext list_ctx;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub_->ListModels(&list_ctx, v1::ListModelsRequest(), &list).ok());
  EXPECT_EQ(list.models_size(), 1);
}

TEST_F(ServerTest, RouteStreamAnswersEachRequestInOrder) {
  v1::ModelInfo info;
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  grpc::ClientContext ctx;
  auto stream = stub_->RouteStream(&ctx);
  for (uint32_t layer = 0; layer < 4; ++layer) {
    v1::RouteTokensRequest request;
    request.set_model("tiny");
    request.set_layer(layer);
    // Token picks experts `layer` and `layer + 4`.
    std::vector<float> logits(8, 0.0f);
    logits[layer] = 5;
    logits[layer + 4] = 4;
    request.mutable_gate_logits()->Add(logits.begin(), logits.end());
    ASSERT_TRUE(stream->Write(request));
    v1::RouteTokensResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_THAT(response.experts(), ::testing::ElementsAre(layer, layer + 4));
  }
  // A bad request ends the stream with its status.
  v1::RouteTokensRequest bad;
  bad.set_model("tiny");
  bad.add_gate_logits(1);
  ASSERT_TRUE(stream->Write(bad));
  stream->WritesDone();
  v1::RouteTokensResponse ignored;
  EXPECT_FALSE(stream->Read(&ignored));
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("not a multiple of num_experts"));
}

// Many requests in flight on one stream: all written before any answer is
// read, the answers come back one per request, in request order.
TEST_F(ServerTest, RouteStreamAnswersPipelinedRequestsInOrder) {
  v1::ModelInfo info;
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  grpc::ClientContext ctx;
  auto stream = stub_->RouteStream(&ctx);
  constexpr uint32_t kRequests = 24;
  for (uint32_t i = 0; i < kRequests; ++i) {
    v1::RouteTokensRequest request;
    request.set_model("tiny");
    request.set_layer(i % 4);
    // Request i has i % 5 + 1 tokens, each picking experts i % 8 and (i + 3) % 8.
    for (uint32_t token = 0; token <= i % 5; ++token) {
      std::vector<float> logits(8, 0.0f);
      logits[i % 8] = 5;
      logits[(i + 3) % 8] = 4;
      request.mutable_gate_logits()->Add(logits.begin(), logits.end());
    }
    ASSERT_TRUE(stream->Write(request)) << i;
  }
  stream->WritesDone();
  for (uint32_t i = 0; i < kRequests; ++i) {
    v1::RouteTokensResponse response;
    ASSERT_TRUE(stream->Read(&response)) << i;
    EXPECT_EQ(response.tokens(), i % 5 + 1) << i;
    for (uint32_t token = 0; token < response.tokens(); ++token) {
      EXPECT_EQ(response.experts(2 * token), i % 8) << i;
      EXPECT_EQ(response.experts(2 * token + 1), (i + 3) % 8) << i;
    }
  }
  v1::RouteTokensResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  EXPECT_TRUE(stream->Finish().ok());
}

// Names become file names under --state_dir: one that could leave it (or
// any name outside the rule) is refused, and nothing is written outside.
TEST(ServerNamesTest, ModelNamesOutsideTheRuleAreRefusedAndStateStaysInItsDirectory) {
  testing::TempDir dir;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.registry.state_dir = dir.File("state");
  auto server = RouterServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::MoeRouter::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string((*server)->port()), grpc::InsecureChannelCredentials()));
  const std::string kLong(1 << 20, 'a');
  for (const std::string& name :
       {std::string("../escape"), std::string(".."), std::string("."), std::string(".hidden"),
        std::string("a/b"), std::string("a b"), std::string("nul\0x", 5), std::string(""), kLong}) {
    grpc::ClientContext ctx;
    v1::RegisterModelRequest request;
    *request.mutable_spec() = SmallSpec(name);
    v1::ModelInfo info;
    const grpc::Status s = stub->RegisterModel(&ctx, request, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name.substr(0, 20);
    EXPECT_THAT(s.error_message(), HasSubstr("model.name"));
    EXPECT_THAT(s.error_message(), HasSubstr("A-Z a-z 0-9 . _ -"));
    EXPECT_LT(s.error_message().size(), 300u) << "the error quotes the whole name";
  }
  // The longest allowed name and every allowed character work.
  const std::string longest(kMaxResourceNameLength, 'm');
  for (const std::string& name : {longest, std::string("Qwen1.5-MoE_A2.7B")}) {
    EXPECT_TRUE((*server)->registry().Register(SmallSpec(name)).ok()) << name;
  }
  EXPECT_THAT((*server)->registry().List(), ::testing::SizeIs(2));
  (*server)->Shutdown(absl::Now() + absl::Seconds(5));
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir.path())) {
    files.push_back(entry.path().lexically_relative(dir.path()).string());
  }
  EXPECT_THAT(files, ::testing::UnorderedElementsAre("state", "state/" + longest + ".state.json",
                                                     "state/Qwen1.5-MoE_A2.7B.state.json"));
}

// Reads a whole FetchExpert stream: the first chunk's header and the bytes.
struct Fetched {
  v1::ExpertChunk header;
  std::string bytes;
  int chunks = 0;
  grpc::Status status;
};

Fetched Fetch(v1::MoeRouter::Stub& stub, const std::string& model, uint32_t layer,
              uint32_t expert) {
  grpc::ClientContext ctx;
  v1::FetchExpertRequest request;
  request.set_model(model);
  request.set_layer(layer);
  request.set_expert(expert);
  auto reader = stub.FetchExpert(&ctx, request);
  Fetched out;
  v1::ExpertChunk chunk;
  bool first = true;
  while (reader->Read(&chunk)) {
    if (first) out.header = chunk;
    first = false;
    ++out.chunks;
    EXPECT_EQ(chunk.offset(), out.bytes.size());
    EXPECT_LE(chunk.data().size(), kExpertChunkBytes);
    out.bytes += chunk.data();
  }
  out.status = reader->Finish();
  return out;
}

// Registration runs off gRPC's callback threads: while one blocks reading
// its checkpoint's manifest (a FIFO no one writes yet), other calls are
// answered; and its deadline is honoured: when the data finally arrives the
// registration is abandoned, not completed behind the caller's back, and
// its memory reservation is returned.
TEST_F(ServerTest, RegistrationRunsOffCallbackThreadsAndHonoursItsDeadline) {
  v1::ModelInfo info;
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  const uint64_t committed = server_->registry().committed_bytes();
  testing::TempDir dir;
  testing::WriteExpertShard(dir.File("model.safetensors"), 4, 8, 8, 3, kMixtralExpertPattern);
  ASSERT_TRUE(SafetensorsStore::WriteManifests({.directory = dir.path()}).ok());
  const std::string manifest_path = dir.File(kManifestFileName);
  const std::string manifest = *ReadFile(manifest_path);
  std::filesystem::remove(manifest_path);
  ASSERT_EQ(mkfifo(manifest_path.c_str(), 0600), 0);

  v1::ModelSpec spec = SmallSpec("st");
  spec.mutable_safetensors()->set_directory(dir.path());
  grpc::Status registered;
  std::thread caller([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    v1::RegisterModelRequest request;
    *request.mutable_spec() = spec;
    v1::ModelInfo ignored;
    registered = stub_->RegisterModel(&ctx, request, &ignored);
  });
  // The server is blocked reading the manifest once the FIFO has a reader.
  int fifo = -1;
  ASSERT_TRUE(testing::WaitFor([&] {
    fifo = open(manifest_path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    return fifo >= 0;
  }));
  v1::RouteTokensResponse routed;
  EXPECT_TRUE(Route("tiny", 0, std::vector<float>(8, 1.0f), &routed).ok());
  grpc::ClientContext list_ctx;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub_->ListModels(&list_ctx, v1::ListModelsRequest(), &list).ok());
  EXPECT_EQ(list.models_size(), 1);
  caller.join();
  EXPECT_EQ(registered.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);

  ASSERT_EQ(write(fifo, manifest.data(), manifest.size()), static_cast<ssize_t>(manifest.size()));
  close(fifo);
  ASSERT_TRUE(testing::WaitFor([&] { return server_->registry().committed_bytes() == committed; }));
  EXPECT_TRUE(absl::IsNotFound(server_->registry().Find("st").status()));
}

TEST_F(ServerTest, FetchExpertStreamsVerifiedBytesFromSafetensors) {
  testing::TempDir dir;
  // 2 layers x 4 experts; rows big enough for several 1 MiB chunks.
  const std::vector<SafetensorsWriteTensor> written =
      testing::WriteExpertShard(dir.File("model.safetensors"), 2, 4, 40000, 3,
                                "model.layers.{layer}.block_sparse_moe.experts.{expert}.");
  v1::ModelSpec spec = SmallSpec("st");
  spec.set_num_layers(2);
  spec.set_num_experts(4);
  spec.set_budget_bytes(8ull << 20);
  spec.mutable_safetensors()->set_directory(dir.path());
  spec.mutable_safetensors()->set_name_preset("mixtral");
  v1::ModelInfo info;
  ASSERT_TRUE(Register(spec, &info).ok());

  const Fetched f = Fetch(*stub_, "st", 1, 2);
  ASSERT_TRUE(f.status.ok()) << f.status.error_message();
  ASSERT_EQ(f.header.tensors_size(), 3);
  EXPECT_EQ(f.header.tensors(0).name(), "model.layers.1.block_sparse_moe.experts.2.w1.weight");
  EXPECT_EQ(f.header.tensors(0).dtype(), "BF16");
  EXPECT_EQ(f.bytes.size(), f.header.total_bytes());
  EXPECT_EQ(f.bytes.size(), 3u * 40000 * 8 * 2);
  // The bytes served are the bytes written, tensor after tensor.
  std::string expected;
  for (const char* w : {"w1", "w2", "w3"}) {
    for (const SafetensorsWriteTensor& t : written) {
      if (t.name == absl::StrCat("model.layers.1.block_sparse_moe.experts.2.", w, ".weight")) {
        expected += t.bytes;
      }
    }
  }
  EXPECT_TRUE(f.bytes == expected) << "served bytes differ from the checkpoint's";
  // The client can verify what it got with the checksums sent.
  uint64_t offset = 0;
  std::vector<std::pair<std::string, uint64_t>> digests;
  for (const v1::TensorHeader& t : f.header.tensors()) {
    const uint64_t sum =
        Xxh3({reinterpret_cast<const uint8_t*>(f.bytes.data()) + offset, t.size_bytes()});
    EXPECT_EQ(sum, t.xxh3());
    digests.emplace_back(t.name(), sum);
    offset += t.size_bytes();
  }
  EXPECT_EQ(ExpertChecksum(digests), f.header.expert_xxh3());

  // Corrupt another expert on disk: DATA_LOSS naming the file and tensor.
  auto header = ReadSafetensorsHeader(dir.File("model.safetensors"));
  for (const auto& t : header->tensors) {
    if (t.name == "model.layers.0.block_sparse_moe.experts.3.w2.weight") {
      testing::CorruptByte(dir.File("model.safetensors"), t.begin + 100);
    }
  }
  const Fetched bad = Fetch(*stub_, "st", 0, 3);
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(bad.status.error_message(), HasSubstr("experts.3.w2.weight"));
  // Nothing of a corrupt expert went out: no header, no bytes.
  EXPECT_EQ(bad.chunks, 0);
  EXPECT_TRUE(bad.bytes.empty());
  EXPECT_EQ(Fetch(*stub_, "st", 0, 9).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Fetch(*stub_, "nope", 0, 0).status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Stats("st").checksum_failures(), 1u);
}

TEST_F(ServerTest, MetricsScrapePassesPromtoolAndCounts) {
  v1::ModelInfo info;
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  v1::RouteTokensResponse routed;
  ASSERT_TRUE(Route("tiny", 0, testing::RandomLogits(3, 8, 1), &routed).ok());
  ASSERT_FALSE(Route("tiny", 0, std::vector<float>(5, 0.0f), &routed).ok());
  ASSERT_FALSE(Route("ghost", 0, std::vector<float>(8, 0.0f), &routed).ok());
  ASSERT_GT(server_->metrics_port(), 0);
  const std::string body = HttpGet("127.0.0.1", server_->metrics_port(), "/metrics").value();
  EXPECT_THAT(body, HasSubstr("moe_router_routed_tokens_total{model=\"tiny\"} 3"));
  EXPECT_THAT(body, HasSubstr("moe_router_route_requests_total{model=\"tiny\",code=\"OK\"} 1"));
  EXPECT_THAT(
      body,
      HasSubstr("moe_router_route_requests_total{model=\"tiny\",code=\"INVALID_ARGUMENT\"} 1"));
  EXPECT_THAT(
      body, HasSubstr("moe_router_route_requests_total{model=\"_unknown_\",code=\"NOT_FOUND\"} 1"));
  EXPECT_THAT(body, HasSubstr("moe_router_cache_misses_total{model=\"tiny\"} 6"));
  EXPECT_THAT(body, HasSubstr("moe_router_cache_budget_bytes{model=\"tiny\"} 65536"));
  EXPECT_THAT(body, HasSubstr("moe_router_page_ins_total{model=\"tiny\",priority=\"urgent\"}"));
  EXPECT_THAT(body,
              HasSubstr("moe_router_route_duration_seconds_bucket{model=\"tiny\",le=\"+Inf\"} 1"));
  EXPECT_THAT(body, HasSubstr("moe_router_build_info{version="));
  // Debian's promtool must accept the exposition.
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.File("metrics.txt"), body).ok());
  const testing::CommandResult promtool =
      testing::RunCommand("promtool check metrics < " + dir.File("metrics.txt"));
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output;
}

TEST_F(ServerTest, PrefetchAndUnregister) {
  v1::ModelInfo info;
  ASSERT_TRUE(Register(SmallSpec("tiny"), &info).ok());
  grpc::ClientContext ctx;
  v1::PrefetchRequest request;
  request.set_model("tiny");
  request.set_layer(2);
  request.add_experts(3);
  request.add_experts(5);
  v1::PrefetchResponse response;
  ASSERT_TRUE(stub_->Prefetch(&ctx, request, &response).ok());
  EXPECT_THAT(response.queued(), ::testing::ElementsAre(3u, 5u));
  grpc::ClientContext bad_ctx;
  request.add_experts(8);
  EXPECT_EQ(stub_->Prefetch(&bad_ctx, request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ClientContext un_ctx;
  v1::UnregisterModelRequest un;
  un.set_model("tiny");
  v1::UnregisterModelResponse un_response;
  ASSERT_TRUE(stub_->UnregisterModel(&un_ctx, un, &un_response).ok());
  grpc::ClientContext again_ctx;
  EXPECT_EQ(stub_->UnregisterModel(&again_ctx, un, &un_response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, HealthAnswersForEveryNameOnBothPortsAndFollowsReadiness) {
  ASSERT_GT(server_->health_port(), 0);
  auto health_only = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->health_port()),
                                         grpc::InsecureChannelCredentials());
  for (const auto& channel : {channel_, health_only}) {
    auto health = grpc::health::v1::Health::NewStub(channel);
    const auto check = [&](const std::string& service) {
      grpc::ClientContext ctx;
      grpc::health::v1::HealthCheckRequest request;
      request.set_service(service);
      grpc::health::v1::HealthCheckResponse response;
      EXPECT_TRUE(health->Check(&ctx, request, &response).ok()) << service;
      return response.status();
    };
    server_->SetReady(true);
    for (const char* name : {"", "liveness", "readiness", "moe_router.v1.MoeRouter"}) {
      EXPECT_EQ(check(name), grpc::health::v1::HealthCheckResponse::SERVING) << name;
    }
    server_->SetReady(false);
    EXPECT_EQ(check("readiness"), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    EXPECT_EQ(check("liveness"), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  // The health port serves nothing else.
  auto stub = v1::MoeRouter::NewStub(health_only);
  grpc::ClientContext ctx;
  v1::ListModelsResponse list;
  EXPECT_EQ(stub->ListModels(&ctx, v1::ListModelsRequest(), &list).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

TEST(ServerStateTest, LearnedStateSurvivesARestartAndCorruptionIsIgnored) {
  testing::TempDir dir;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.registry.state_dir = dir.path() + "/state";
  std::string learned;
  {
    auto server = *RouterServer::Start(options);
    ASSERT_TRUE(server->registry().Register(SmallSpec("tiny")).ok());
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server->port()),
                                       grpc::InsecureChannelCredentials());
    auto stub = v1::MoeRouter::NewStub(channel);
    for (uint32_t layer = 0; layer < 4; ++layer) {
      grpc::ClientContext ctx;
      v1::RouteTokensRequest request;
      request.set_model("tiny");
      request.set_layer(layer);
      const std::vector<float> logits = testing::RandomLogits(8, 8, layer);
      request.mutable_gate_logits()->Add(logits.begin(), logits.end());
      v1::RouteTokensResponse response;
      ASSERT_TRUE(stub->RouteTokens(&ctx, request, &response).ok());
    }
    learned = (*server->registry().Find("tiny"))->engine->ExportState();
    server->Shutdown(absl::Now() + absl::Seconds(5));
  }
  {
    auto server = *RouterServer::Start(options);
    ASSERT_TRUE(server->registry().Register(SmallSpec("tiny")).ok());
    EXPECT_EQ((*server->registry().Find("tiny"))->engine->ExportState(), learned);
  }
  // A torn state file is reported and ignored: the model starts as fresh as
  // one that never had state, and registration works.
  std::string fresh;
  {
    ModelRegistry stateless;
    ASSERT_TRUE(stateless.Register(SmallSpec("tiny")).ok());
    fresh = (*stateless.Find("tiny"))->engine->ExportState();
  }
  ASSERT_NE(fresh, learned);
  const std::string path = options.registry.state_dir + "/tiny.state.json";
  ASSERT_TRUE(WriteFileAtomically(path, learned.substr(0, learned.size() / 3)).ok());
  auto server = *RouterServer::Start(options);
  ::testing::internal::CaptureStderr();
  const absl::StatusOr<bool> registered = server->registry().Register(SmallSpec("tiny"));
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(registered.ok()) << registered.status();
  EXPECT_THAT(log, HasSubstr("ignoring saved state " + path));
  EXPECT_EQ((*server->registry().Find("tiny"))->engine->ExportState(), fresh);
}

// While serving, learned state is saved every snapshot interval, so a crash
// loses at most that much. A save that fails (here: the temporary file's
// name is taken by a directory, which fails even for root) is counted in
// /metrics and leaves the previous snapshot as it was.
TEST(ServerStateTest, SnapshotsWhileServingAndAFailedOneKeepsThePrevious) {
  testing::TempDir dir;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  options.registry.state_dir = dir.path();
  options.snapshot_interval = absl::Milliseconds(20);
  auto server = *RouterServer::Start(options);
  ASSERT_TRUE(server->registry().Register(SmallSpec("tiny")).ok());
  auto engine = (*server->registry().Find("tiny"))->engine;
  ASSERT_TRUE(engine->Route(1, testing::RandomLogits(8, 8, 1)).ok());
  const std::string learned = engine->ExportState();
  const std::string path = dir.File("tiny.state.json");
  ASSERT_TRUE(testing::WaitFor([&] {
    const absl::StatusOr<std::string> saved = ReadFile(path);
    return saved.ok() && *saved == learned && server->registry().last_snapshot_seconds() > 0;
  }));

  std::filesystem::create_directory(absl::StrCat(path, ".tmp.", getpid()));
  ASSERT_TRUE(engine->Route(1, testing::RandomLogits(8, 8, 2)).ok());
  ASSERT_NE(engine->ExportState(), learned);
  ASSERT_TRUE(testing::WaitFor([&] { return server->registry().snapshot_failures() >= 2; }));
  EXPECT_EQ(*ReadFile(path), learned);
  EXPECT_THAT(HttpGet("127.0.0.1", server->metrics_port(), "/metrics").value(),
              ::testing::ContainsRegex("moe_router_state_snapshot_failures_total [1-9]"));
}

}  // namespace
}  // namespace moe_router
