// Every error path of every RPC, against the real server over a real
// channel: each refusal has the right code and a message naming what is
// wrong, and changes nothing.
#include <grpcpp/grpcpp.h>

#include <functional>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "server/server.h"
#include "tests/testing/local_server.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kExpertBytes = 4096;
constexpr uint64_t kMemoryLimit = uint64_t{64} << 20;

v1::ModelSpec SmallSpec(const std::string& name) {
  return testing::SyntheticSpec(name, /*layers=*/4, kExpertBytes, /*budget_experts=*/16);
}

struct ErrorCase {
  std::string what;
  std::function<grpc::Status()> call;
  grpc::StatusCode code;
  std::string message;  // a substring the message must hold
};

class ErrorPathsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options = testing::LocalServerOptions();
    options.limits.max_tokens_per_request = 100;
    options.max_message_bytes = 16 << 20;
    options.registry.memory_limit_bytes = kMemoryLimit;
    options.registry.max_models = 3;
    options.registry.worker_caches.max_caches = 2;
    auto server = RouterServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::MoeRouter::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
    v1::ModelInfo info;
    ASSERT_TRUE(Register(SmallSpec("m"), &info).ok());
    ASSERT_TRUE(OpenCache("m", "w", 4 * kExpertBytes).ok());
  }

  grpc::Status Register(const v1::ModelSpec& spec, v1::ModelInfo* info = nullptr) {
    grpc::ClientContext ctx;
    v1::RegisterModelRequest request;
    *request.mutable_spec() = spec;
    v1::ModelInfo ignored;
    return stub_->RegisterModel(&ctx, request, info != nullptr ? info : &ignored);
  }
  grpc::Status Route(const std::string& model, uint32_t layer, size_t floats,
                     const std::string& cache = "", float value = 0) {
    grpc::ClientContext ctx;
    v1::RouteTokensRequest request;
    request.set_model(model);
    request.set_layer(layer);
    request.set_cache(cache);
    request.mutable_gate_logits()->Resize(static_cast<int>(floats), value);
    v1::RouteTokensResponse response;
    return stub_->RouteTokens(&ctx, request, &response);
  }
  grpc::Status Prefetch(v1::PrefetchRequest request) {
    grpc::ClientContext ctx;
    v1::PrefetchResponse response;
    return stub_->Prefetch(&ctx, request, &response);
  }
  grpc::Status Unregister(const std::string& model) {
    grpc::ClientContext ctx;
    v1::UnregisterModelRequest request;
    request.set_model(model);
    v1::UnregisterModelResponse response;
    return stub_->UnregisterModel(&ctx, request, &response);
  }
  grpc::Status Stats(const std::string& model, const std::string& cache = "",
                     v1::ModelStats* out = nullptr) {
    grpc::ClientContext ctx;
    v1::GetModelStatsRequest request;
    request.set_model(model);
    request.set_cache(cache);
    v1::ModelStats ignored;
    return stub_->GetModelStats(&ctx, request, out != nullptr ? out : &ignored);
  }
  grpc::Status Fetch(const std::string& model, uint32_t layer, uint32_t expert) {
    grpc::ClientContext ctx;
    v1::FetchExpertRequest request;
    request.set_model(model);
    request.set_layer(layer);
    request.set_expert(expert);
    auto reader = stub_->FetchExpert(&ctx, request);
    v1::ExpertChunk chunk;
    while (reader->Read(&chunk)) {
    }
    return reader->Finish();
  }
  grpc::Status OpenCache(const std::string& model, const std::string& cache, uint64_t budget,
                         const std::string& policy = "") {
    grpc::ClientContext ctx;
    v1::OpenCacheRequest request;
    request.set_model(model);
    request.set_cache(cache);
    request.set_budget_bytes(budget);
    request.set_eviction_policy(policy);
    v1::CacheInfo info;
    return stub_->OpenCache(&ctx, request, &info);
  }
  grpc::Status CloseCache(const std::string& model, const std::string& cache) {
    grpc::ClientContext ctx;
    v1::CloseCacheRequest request;
    request.set_model(model);
    request.set_cache(cache);
    v1::CloseCacheResponse response;
    return stub_->CloseCache(&ctx, request, &response);
  }
  grpc::Status SyncCache(const std::string& model, const std::string& cache, uint32_t layer,
                         uint32_t expert) {
    grpc::ClientContext ctx;
    v1::SyncCacheRequest request;
    request.set_model(model);
    request.set_cache(cache);
    v1::ExpertRef* ref = request.add_resident();
    ref->set_layer(layer);
    ref->set_expert(expert);
    v1::CacheInfo info;
    return stub_->SyncCache(&ctx, request, &info);
  }
  grpc::Status StreamFirst(const std::string& model, uint32_t layer, size_t floats) {
    grpc::ClientContext ctx;
    auto stream = stub_->RouteStream(&ctx);
    v1::RouteTokensRequest request;
    request.set_model(model);
    request.set_layer(layer);
    request.mutable_gate_logits()->Resize(static_cast<int>(floats), 0.0f);
    stream->Write(request);
    stream->WritesDone();
    v1::RouteTokensResponse response;
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  }

  static v1::ModelSpec With(const std::string& name,
                            const std::function<void(v1::ModelSpec*)>& change) {
    v1::ModelSpec spec = SmallSpec(name);
    change(&spec);
    return spec;
  }

  std::unique_ptr<RouterServer> server_;
  std::unique_ptr<v1::MoeRouter::Stub> stub_;
};

TEST_F(ErrorPathsTest, EveryRefusalHasItsCodeAndSaysWhy) {
  using Code = grpc::StatusCode;
  const std::string megabyte_name(1 << 20, 'n');
  v1::PrefetchRequest prefetch;
  prefetch.set_model("m");
  const auto prefetch_with = [&](const std::function<void(v1::PrefetchRequest*)>& change) {
    v1::PrefetchRequest r = prefetch;
    change(&r);
    return Prefetch(r);
  };
  const std::vector<ErrorCase> cases = {
      // RouteTokens
      {"route: no model", [&] { return Route("", 0, 8); }, Code::INVALID_ARGUMENT,
       "model name must not be empty"},
      {"route: unknown model", [&] { return Route("nope", 0, 8); }, Code::NOT_FOUND,
       "no model named 'nope'"},
      {"route: 0 tokens", [&] { return Route("m", 0, 0); }, Code::INVALID_ARGUMENT,
       "gate_logits is empty"},
      {"route: ragged logits", [&] { return Route("m", 0, 7); }, Code::INVALID_ARGUMENT,
       "not a multiple of num_experts (8)"},
      {"route: layer 2^32-1", [&] { return Route("m", 0xffffffffu, 8); }, Code::INVALID_ARGUMENT,
       "layer 4294967295 is out of range"},
      {"route: NaN", [&] { return Route("m", 0, 8, "", std::nanf("")); }, Code::INVALID_ARGUMENT,
       "NaN"},
      {"route: tokens over the limit", [&] { return Route("m", 0, 8 * 101); },
       Code::RESOURCE_EXHAUSTED, "101 tokens in one request, over the limit of 100"},
      {"route: 10^7 floats, past the message limit", [&] { return Route("m", 0, 10'000'000); },
       Code::RESOURCE_EXHAUSTED, "larger than max"},
      {"route: unknown cache", [&] { return Route("m", 0, 8, "nope"); }, Code::NOT_FOUND,
       "has no open cache 'nope'"},
      // RouteStream
      {"stream: unknown model", [&] { return StreamFirst("nope", 0, 8); }, Code::NOT_FOUND,
       "no model named 'nope'"},
      {"stream: layer out of range", [&] { return StreamFirst("m", 4, 8); }, Code::INVALID_ARGUMENT,
       "layer 4 is out of range"},
      // Prefetch
      {"prefetch: unknown model", [&] { return prefetch_with([](auto* r) { r->set_model("x"); }); },
       Code::NOT_FOUND, "no model named 'x'"},
      {"prefetch: layer out of range",
       [&] { return prefetch_with([](auto* r) { r->set_layer(4); }); }, Code::INVALID_ARGUMENT,
       "layer 4 is out of range"},
      {"prefetch: expert out of range",
       [&] { return prefetch_with([](auto* r) { r->add_experts(8); }); }, Code::INVALID_ARGUMENT,
       "expert 8"},
      {"prefetch: gate guess of the wrong width",
       [&] { return prefetch_with([](auto* r) { r->add_gate_logits(1); }); },
       Code::INVALID_ARGUMENT, "gate_logits"},
      {"prefetch: unknown cache",
       [&] { return prefetch_with([](auto* r) { r->set_cache("nope"); }); }, Code::NOT_FOUND,
       "has no open cache 'nope'"},
      // RegisterModel
      {"register: no name", [&] { return Register(With("", [](auto*) {})); },
       Code::INVALID_ARGUMENT, "model.name"},
      {"register: 1 MB name", [&] { return Register(SmallSpec(megabyte_name)); },
       Code::INVALID_ARGUMENT, "model.name"},
      {"register: top_k above the experts",
       [&] { return Register(With("a", [](auto* s) { s->set_top_k(9); })); },
       Code::INVALID_ARGUMENT, "router.top_k (9) must be <= router.num_experts (8)"},
      {"register: a million layers",
       [&] { return Register(With("a", [](auto* s) { s->set_num_layers(1'000'000); })); },
       Code::INVALID_ARGUMENT, "model.num_layers must be in [1, 1024]"},
      {"register: budget below one expert",
       [&] { return Register(With("a", [](auto* s) { s->set_budget_bytes(kExpertBytes - 1); })); },
       Code::INVALID_ARGUMENT, "smaller than"},
      {"register: budget near 2^64",
       [&] {
         return Register(With("a", [](auto* s) {
           s->set_budget_bytes(~uint64_t{0} - 1000);
           s->mutable_synthetic()->set_expert_bytes(~uint64_t{0} - 1000);
         }));
       },
       Code::RESOURCE_EXHAUSTED, "memory limit of 64.0 MiB"},
      {"register: over the memory limit",
       [&] { return Register(With("a", [](auto* s) { s->set_budget_bytes(kMemoryLimit); })); },
       Code::RESOURCE_EXHAUSTED, "it needs 64."},
      {"register: missing store directory",
       [&] {
         return Register(With("a", [](auto* s) {
           s->mutable_safetensors()->set_directory("/nonexistent/checkpoint");
         }));
       },
       Code::NOT_FOUND, "/nonexistent/checkpoint"},
      {"register: no store", [&] { return Register(With("a", [](auto* s) { s->clear_store(); })); },
       Code::INVALID_ARGUMENT, "model.store"},
      {"register: another spec under a taken name",
       [&] { return Register(With("m", [](auto* s) { s->set_top_k(3); })); }, Code::ALREADY_EXISTS,
       "model 'm' is registered with a different spec"},
      // UnregisterModel
      {"unregister: no name", [&] { return Unregister(""); }, Code::INVALID_ARGUMENT,
       "model name must not be empty"},
      {"unregister: unknown", [&] { return Unregister("nope"); }, Code::NOT_FOUND,
       "no model named 'nope'"},
      // GetModelStats
      {"stats: no name", [&] { return Stats(""); }, Code::INVALID_ARGUMENT,
       "model name must not be empty"},
      {"stats: unknown", [&] { return Stats("nope"); }, Code::NOT_FOUND, "no model named"},
      {"stats: unknown cache", [&] { return Stats("m", "nope"); }, Code::NOT_FOUND,
       "has no open cache 'nope'"},
      // FetchExpert
      {"fetch: unknown model", [&] { return Fetch("nope", 0, 0); }, Code::NOT_FOUND,
       "no model named"},
      {"fetch: layer out of range", [&] { return Fetch("m", 0xffffffffu, 0); },
       Code::INVALID_ARGUMENT, "out of range"},
      {"fetch: expert out of range", [&] { return Fetch("m", 0, 8); }, Code::INVALID_ARGUMENT,
       "out of range"},
      // OpenCache
      {"open: unknown model", [&] { return OpenCache("nope", "c", kExpertBytes); }, Code::NOT_FOUND,
       "no model named"},
      {"open: bad name", [&] { return OpenCache("m", "../c", kExpertBytes); },
       Code::INVALID_ARGUMENT, "cache"},
      {"open: budget below one expert", [&] { return OpenCache("m", "c", kExpertBytes - 1); },
       Code::INVALID_ARGUMENT, "smaller than one expert"},
      {"open: unknown policy", [&] { return OpenCache("m", "c", kExpertBytes, "nope"); },
       Code::INVALID_ARGUMENT, "nope"},
      // CloseCache, SyncCache
      {"close: unknown cache", [&] { return CloseCache("m", "nope"); }, Code::NOT_FOUND,
       "has no open cache 'nope'"},
      {"close: unknown model", [&] { return CloseCache("nope", "w"); }, Code::NOT_FOUND,
       "no model named"},
      {"sync: unknown cache", [&] { return SyncCache("m", "nope", 0, 0); }, Code::NOT_FOUND,
       "has no open cache 'nope'"},
      {"sync: expert out of range", [&] { return SyncCache("m", "w", 0, 8); },
       Code::INVALID_ARGUMENT, "out of range"},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.what);
    const grpc::Status s = c.call();
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_FALSE(s.error_message().empty());
    EXPECT_THAT(s.error_message(), HasSubstr(c.message));
  }

  // None of it changed anything: one model, nothing routed or fetched, the
  // one cache still open and empty.
  grpc::ClientContext ctx;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub_->ListModels(&ctx, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.memory_limit_bytes(), kMemoryLimit);
  EXPECT_EQ(list.memory_committed_bytes(), list.models(0).memory_bytes());
  v1::ModelStats stats;
  ASSERT_TRUE(Stats("m", "", &stats).ok());
  EXPECT_EQ(stats.routed_tokens(), 0u);
  EXPECT_EQ(stats.open_caches(), 1u);
  ASSERT_TRUE(Stats("m", "w", &stats).ok());
  EXPECT_EQ(stats.resident_bytes(), 0u);
}

// The sum over models is bounded, not each model alone; unregistering
// gives the memory back.
TEST_F(ErrorPathsTest, MemoryLimitBoundsTheSumOverModels) {
  const uint64_t half = kMemoryLimit / 2;
  const auto spec = [&](const std::string& name) {
    return With(name, [&](v1::ModelSpec* s) { s->set_budget_bytes(half); });
  };
  v1::ModelInfo info;
  ASSERT_TRUE(Register(spec("a"), &info).ok());
  EXPECT_GT(info.memory_bytes(), half);
  const grpc::Status refused = Register(spec("b"));
  ASSERT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(), HasSubstr("cannot register model 'b'"));
  EXPECT_THAT(refused.error_message(), HasSubstr("committed to 2 other models"));
  ASSERT_TRUE(Unregister("a").ok());
  EXPECT_TRUE(Register(spec("b")).ok());
}

TEST_F(ErrorPathsTest, ModelCountIsBounded) {
  ASSERT_TRUE(Register(SmallSpec("a")).ok());
  ASSERT_TRUE(Register(SmallSpec("b")).ok());
  const grpc::Status s = Register(SmallSpec("c"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("hosts 3 models, its limit (--max_models)"));
  // The same spec again is not a new model.
  EXPECT_TRUE(Register(SmallSpec("a")).ok());
}

TEST_F(ErrorPathsTest, WorkerCacheCountIsBounded) {
  ASSERT_TRUE(OpenCache("m", "w2", kExpertBytes).ok());
  const grpc::Status s = OpenCache("m", "w3", kExpertBytes);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("model 'm' has 2 open caches, the limit"));
}

}  // namespace
}  // namespace moe_router
