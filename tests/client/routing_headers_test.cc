// What a proxy routes by: every client call names its model (x-moe-model),
// and every call about a worker cache names it too (x-moe-cache:
// "<model>/<cache>"), FetchExpert and the Learn stream included; C++ and
// Python alike. A recording service on 127.0.0.1:0 sees the real metadata.
#include <grpcpp/grpcpp.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/in_process_worker.h"
#include "client/worker_cache.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "proto/grpc_status.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

// Per RPC, the x-moe-model and x-moe-cache values of its last call.
class RecordingService final : public v1::MoeRouter::CallbackService {
 public:
  struct Seen {
    std::string model;
    std::string cache;
  };
  std::map<std::string, Seen> seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

  // The next `n` RouteTokens calls fail UNAVAILABLE, marked as a draining
  // replica marks the calls it refused before doing any of them, or not.
  void RefuseNextRoutes(int n, bool marked) {
    absl::MutexLock lock(&mu_);
    refusals_left_ = n;
    refusals_marked_ = marked;
  }
  int route_calls() const {
    absl::MutexLock lock(&mu_);
    return route_calls_;
  }

  grpc::ServerUnaryReactor* RouteTokens(grpc::CallbackServerContext* c,
                                        const v1::RouteTokensRequest*,
                                        v1::RouteTokensResponse*) override {
    bool refuse, marked;
    {
      absl::MutexLock lock(&mu_);
      ++route_calls_;
      refuse = refusals_left_ > 0;
      refusals_left_ -= refuse;
      marked = refusals_marked_;
    }
    if (!refuse) return Ok("RouteTokens", c);
    if (marked) c->AddTrailingMetadata(kRefusedTrailer, "draining");
    grpc::ServerUnaryReactor* reactor = c->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "refused"));
    return reactor;
  }
  grpc::ServerUnaryReactor* Prefetch(grpc::CallbackServerContext* c, const v1::PrefetchRequest*,
                                     v1::PrefetchResponse*) override {
    return Ok("Prefetch", c);
  }
  grpc::ServerUnaryReactor* OpenCache(grpc::CallbackServerContext* c, const v1::OpenCacheRequest*,
                                      v1::CacheInfo*) override {
    return Ok("OpenCache", c);
  }
  grpc::ServerUnaryReactor* CloseCache(grpc::CallbackServerContext* c, const v1::CloseCacheRequest*,
                                       v1::CloseCacheResponse*) override {
    return Ok("CloseCache", c);
  }
  grpc::ServerUnaryReactor* SyncCache(grpc::CallbackServerContext* c, const v1::SyncCacheRequest*,
                                      v1::CacheInfo*) override {
    return Ok("SyncCache", c);
  }
  grpc::ServerUnaryReactor* GetModelStats(grpc::CallbackServerContext* c,
                                          const v1::GetModelStatsRequest*,
                                          v1::ModelStats*) override {
    return Ok("GetModelStats", c);
  }
  grpc::ServerWriteReactor<v1::ExpertChunk>* FetchExpert(grpc::CallbackServerContext* c,
                                                         const v1::FetchExpertRequest*) override {
    Record("FetchExpert", c);
    return Refuse<grpc::ServerWriteReactor<v1::ExpertChunk>>();
  }
  grpc::ServerBidiReactor<v1::WorkerReport, v1::FleetUpdate>* Learn(
      grpc::CallbackServerContext* c) override {
    Record("Learn", c);
    return Refuse<grpc::ServerBidiReactor<v1::WorkerReport, v1::FleetUpdate>>();
  }

 private:
  // A stream refused at once: the headers are what this service is for.
  template <typename Reactor>
  static Reactor* Refuse() {
    struct Refusal final : Reactor {
      Refusal() { this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "recording only")); }
      void OnDone() override { delete this; }
    };
    return new Refusal();
  }
  void Record(const std::string& rpc, grpc::CallbackServerContext* c) {
    const auto value = [&](const char* key) {
      const auto it = c->client_metadata().find(key);
      return it == c->client_metadata().end() ? std::string()
                                              : std::string(it->second.data(), it->second.size());
    };
    absl::MutexLock lock(&mu_);
    seen_[rpc] = {value(kModelHeader), value(kCacheHeader)};
  }
  grpc::ServerUnaryReactor* Ok(const std::string& rpc, grpc::CallbackServerContext* c) {
    Record(rpc, c);
    grpc::ServerUnaryReactor* reactor = c->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  mutable absl::Mutex mu_;
  std::map<std::string, Seen> seen_ ABSL_GUARDED_BY(mu_);
  int route_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int refusals_left_ ABSL_GUARDED_BY(mu_) = 0;
  bool refusals_marked_ ABSL_GUARDED_BY(mu_) = false;
};

class RoutingHeadersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = absl::StrCat("127.0.0.1:", port_);
  }
  void TearDown() override { server_->Shutdown(); }

  void ExpectEveryCacheCallNamed(const std::string& cache) {
    const auto seen = service_.seen();
    for (const char* rpc :
         {"RouteTokens", "Prefetch", "OpenCache", "SyncCache", "CloseCache", "FetchExpert"}) {
      SCOPED_TRACE(rpc);
      ASSERT_EQ(seen.count(rpc), 1u);
      EXPECT_EQ(seen.at(rpc).model, "m");
      EXPECT_EQ(seen.at(rpc).cache, "m/" + cache);
    }
  }

  RecordingService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
};

TEST_F(RoutingHeadersTest, TheCppClientNamesTheModelAndTheCache) {
  auto client = Client::Connect(address_);
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->Route("m", 0, {0.0f, 1.0f}, "pod-1.gpu0").ok());
  v1::PrefetchRequest prefetch;
  prefetch.set_model("m");
  prefetch.set_cache("pod-1.gpu0");
  EXPECT_TRUE((*client)->Prefetch(prefetch).ok());
  EXPECT_TRUE((*client)->OpenCache("m", "pod-1.gpu0", 100).ok());
  v1::SyncCacheRequest sync;
  sync.set_model("m");
  sync.set_cache("pod-1.gpu0");
  EXPECT_TRUE((*client)->SyncCache(sync).ok());
  EXPECT_TRUE((*client)->CloseCache("m", "pod-1.gpu0").ok());
  // A WorkerCache's expert source fetches for its cache.
  EXPECT_FALSE(ServerExpertSource(**client, "m", "pod-1.gpu0")->Load({0, 1}).ok());
  ExpectEveryCacheCallNamed("pod-1.gpu0");
  // Without a cache: the model only.
  EXPECT_TRUE((*client)->Stats("m").ok());
  EXPECT_EQ(service_.seen().at("GetModelStats").model, "m");
  EXPECT_EQ(service_.seen().at("GetModelStats").cache, "");
}

TEST_F(RoutingHeadersTest, TheInProcessWorkersStreamNamesItsCache) {
  auto worker =
      InProcessWorker::Start(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()),
                             {.model = "m",
                              .cache = "pod-2.gpu1",
                              .budget_bytes = 100,
                              .connect_timeout = absl::Seconds(5)});
  EXPECT_FALSE(worker.ok());  // the recording service refuses the stream
  ASSERT_EQ(service_.seen().count("Learn"), 1u);
  EXPECT_EQ(service_.seen().at("Learn").model, "m");
  EXPECT_EQ(service_.seen().at("Learn").cache, "m/pod-2.gpu1");
}

// A call a draining replica refused (x-moe-refused) is sent again; any other
// UNAVAILABLE is returned as it is: the call may have been carried out.
TEST_F(RoutingHeadersTest, TheCppClientSendsAgainOnlyWhatADrainingReplicaRefused) {
  auto client = Client::Connect(address_);
  ASSERT_TRUE(client.ok());
  service_.RefuseNextRoutes(2, /*marked=*/true);
  EXPECT_TRUE((*client)->Route("m", 0, {0.0f, 1.0f}, "c").ok());
  EXPECT_EQ(service_.route_calls(), 3);
  service_.RefuseNextRoutes(1, /*marked=*/false);
  EXPECT_EQ((*client)->Route("m", 0, {0.0f, 1.0f}, "c").status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(service_.route_calls(), 4);
  // Refused until the deadline: the refusal is what comes back.
  (*client)->set_timeout(absl::Milliseconds(300));
  service_.RefuseNextRoutes(1000, /*marked=*/true);
  EXPECT_EQ((*client)->Route("m", 0, {0.0f, 1.0f}, "c").status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_GT(service_.route_calls(), 5);
}

// A WorkerCache sends a refused call again as it is (nothing was done);
// any other UNAVAILABLE may have been carried out by a replica now lost, so
// it reopens its cache, states what it holds (SyncCache), and then repeats
// the call, counting the failover.
TEST_F(RoutingHeadersTest, TheCppWorkerCacheRestatesWhatItHoldsBeforeRepeatingALostCall) {
  auto client = Client::Connect(address_);
  ASSERT_TRUE(client.ok());
  auto cache = WorkerCache::Open(**client, {.model = "m", .cache = "c", .budget_bytes = 100},
                                 ServerExpertSource(**client, "m", "c"));
  ASSERT_TRUE(cache.ok()) << cache.status();
  service_.RefuseNextRoutes(2, /*marked=*/true);
  ASSERT_TRUE((*cache)->Route(0, {0.0f, 1.0f}).ok());
  EXPECT_EQ(service_.route_calls(), 3);
  EXPECT_EQ((*cache)->report().failovers, 0u);
  EXPECT_EQ(service_.seen().count("SyncCache"), 0u);
  service_.RefuseNextRoutes(1, /*marked=*/false);
  ASSERT_TRUE((*cache)->Route(0, {0.0f, 1.0f}).ok());
  EXPECT_EQ(service_.route_calls(), 5);
  EXPECT_EQ((*cache)->report().failovers, 1u);
  EXPECT_EQ(service_.seen().count("SyncCache"), 1u);
}

TEST_F(RoutingHeadersTest, ThePythonWorkerCacheRestatesWhatItHoldsBeforeRepeatingALostCall) {
  service_.RefuseNextRoutes(2, /*marked=*/true);
  const std::string script =
      absl::StrCat("import sys; sys.path.insert(0, '", PY_PACKAGE_DIR, "')\n", "import grpc\n",
                   "from moe_router import WorkerCache\n",
                   "cache = WorkerCache(grpc.insecure_channel('", address_, "'), 'm', 'c', 100)\n",
                   "cache.route(0, [0.0, 1.0])\n", "print('routed, failovers', cache.failovers)\n");
  testing::TempDir dir;
  ASSERT_TRUE(
      testing::RunCommand(absl::StrCat("cat > ", dir.File("retry.py"), " <<'EOF'\n", script, "EOF"))
          .exit_code == 0);
  testing::CommandResult run =
      testing::RunCommand(absl::StrCat("/usr/bin/python3 ", dir.File("retry.py")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, ::testing::HasSubstr("routed, failovers 0"));
  EXPECT_EQ(service_.route_calls(), 3);
  EXPECT_EQ(service_.seen().count("SyncCache"), 0u);
  service_.RefuseNextRoutes(1, /*marked=*/false);
  run = testing::RunCommand(absl::StrCat("/usr/bin/python3 ", dir.File("retry.py")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, ::testing::HasSubstr("routed, failovers 1"));
  EXPECT_EQ(service_.route_calls(), 5);
  EXPECT_EQ(service_.seen().count("SyncCache"), 1u);
}

TEST_F(RoutingHeadersTest, ThePythonWorkerCacheNamesTheModelAndTheCache) {
  const std::string script =
      absl::StrCat("import sys; sys.path.insert(0, '", PY_PACKAGE_DIR, "')\n", "import grpc\n",
                   "from moe_router import WorkerCache, fetch_expert\n",
                   "cache = WorkerCache(grpc.insecure_channel('", address_,
                   "'), 'm', 'pod-3.gpu2', 100)\n", "cache.route(0, [0.0, 1.0])\n",
                   "cache.prefetch(0, [0.0, 1.0])\n", "cache.resync()\n", "cache.close()\n",
                   "try:\n", "    cache.get(0, 1)\n", "except grpc.RpcError:\n", "    pass\n");
  testing::TempDir dir;
  ASSERT_TRUE(testing::RunCommand(
                  absl::StrCat("cat > ", dir.File("headers.py"), " <<'EOF'\n", script, "EOF"))
                  .exit_code == 0);
  const testing::CommandResult run =
      testing::RunCommand(absl::StrCat("/usr/bin/python3 ", dir.File("headers.py")));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  ExpectEveryCacheCallNamed("pod-3.gpu2");
}

}  // namespace
}  // namespace moe_router
