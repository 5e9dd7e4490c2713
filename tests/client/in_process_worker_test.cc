// In-process routing end to end: the real server on 127.0.0.1:0, workers
// routing in this process and learning over the Learn stream.
#include "client/in_process_worker.h"

#include <functional>
#include <set>

#include "absl/strings/str_cat.h"
#include "cli/server_replay.h"
#include "client/worker_cache.h"
#include "core/cache/peer_policies.h"
#include "core/store/synthetic_store.h"
#include "eval/replay.h"
#include "eval/replay_schedule.h"
#include "eval/trace.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/proto_to_core.h"
#include "server/server.h"
#include "tests/testing/local_server.h"
#include "tests/testing/tcp_relay.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

constexpr uint64_t kExpertBytes = 4096;

std::unique_ptr<RouterServer> StartServer(const std::string& listen) {
  return testing::StartLocalServer(testing::LocalServerOptions(listen));
}

// A loopback port nothing listens on: a server started on port 0 says which
// port is free, then stops.
int FreePort() { return StartServer("127.0.0.1:0")->port(); }

v1::ModelSpec Spec(const std::string& name, uint32_t layers, bool prefetch) {
  v1::ModelSpec spec = testing::SyntheticSpec(name, layers, kExpertBytes, /*budget_experts=*/256);
  if (!prefetch) {
    spec.set_prefetch_next_layer(0);
    spec.mutable_router()->set_prefetch_threshold(0);
  }
  return spec;
}

std::shared_ptr<grpc::Channel> Channel(int port) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
}

std::vector<ExpertKey> Keys(const google::protobuf::RepeatedPtrField<v1::ExpertRef>& refs) {
  std::vector<ExpertKey> keys;
  for (const v1::ExpertRef& r : refs) keys.push_back({r.layer(), r.expert()});
  std::sort(keys.begin(), keys.end());
  return keys;
}

// Over the shared Mixtral trace, prefetch off: an in-process worker decides,
// step by step, as a WorkerCache routing remotely with the same budget.
// The shared trace and, on one server, models "remote" and "local" of its
// shape: a WorkerCache routing remotely on the first, an InProcessWorker on
// the second, each with a quarter of the experts as its budget.
class SideBySideTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = testing::SharedTracePath();
    if (path.empty()) GTEST_SKIP() << "the shared trace is absent";
    auto trace = ReadTrace(path);
    ASSERT_TRUE(trace.ok()) << trace.status();
    trace_ = *std::move(trace);
  }

  // `policy`: the models' eviction policy (empty: the default).
  void Start(bool prefetch, const std::string& policy = "") {
    server_ = StartServer("127.0.0.1:0");
    auto client = Client::Connect(absl::StrCat("127.0.0.1:", server_->port()));
    ASSERT_TRUE(client.ok());
    client_ = *std::move(client);
    for (const char* model : {"remote", "local"}) {
      v1::ModelSpec spec = Spec(model, trace_.num_layers, prefetch);
      if (!policy.empty()) spec.set_eviction_policy(policy);
      ASSERT_TRUE(client_->Register(spec).ok());
    }
    budget_ = uint64_t{trace_.num_layers} * trace_.num_experts / 4 * kExpertBytes;
    auto remote =
        WorkerCache::Open(*client_, {.model = "remote", .cache = "w", .budget_bytes = budget_},
                          ServerExpertSource(*client_, "remote"));
    ASSERT_TRUE(remote.ok()) << remote.status();
    remote_ = *std::move(remote);
    auto local = InProcessWorker::Start(Channel(server_->port()),
                                        {.model = "local",
                                         .cache = "w",
                                         .budget_bytes = budget_,
                                         .report_interval = absl::Milliseconds(20)});
    ASSERT_TRUE(local.ok()) << local.status();
    local_ = *std::move(local);
  }

  // Routes the whole trace through both workers and asserts that every
  // step decides the same; counts what they did.
  void RouteBothAlike() {
    std::vector<float> scratch;
    WorkerStep step;
    for (const RoutingTrace::Run& run : trace_.runs) {
      for (size_t i = 0; i < run.steps.size(); ++i) {
        const uint32_t layer = run.steps[i].layer;
        const absl::Span<const float> logits = StepLogitsForServer(trace_, run, i, scratch);
        auto routed = remote_->Route(layer, logits);
        ASSERT_TRUE(routed.ok()) << routed.status();
        ASSERT_TRUE(local_->engine().Route(layer, logits, &step).ok());
        ASSERT_THAT(step.batch.experts, ::testing::ElementsAreArray(routed->experts()))
            << run.name << " step " << i;
        ASSERT_THAT(step.batch.resident, ::testing::ElementsAreArray(routed->resident()));
        ASSERT_EQ(step.cache.evictions, Keys(routed->evictions()));
        ASSERT_EQ(step.cache.urgent, Keys(routed->urgent_page_ins()));
        evictions_ += step.cache.evictions.size();
        for (uint8_t r : step.batch.resident) hits_ += r;
        ++steps_;
      }
    }
  }

  // Routes the schedule's batched steps through both workers, each token's
  // logits from `token_logits` (the step, the token's place in it), and
  // asserts that every step decides the same; counts hits as replay does (a
  // step's first use of a missing expert misses) and rerouted tokens.
  void RouteBatchesAlike(
      const ReplaySchedule& schedule,
      const std::function<absl::Span<const float>(const ReplayStep&, size_t)>& token_logits) {
    std::vector<float> logits;
    WorkerStep step;
    for (const ReplayStep& s : schedule.steps()) {
      logits.clear();
      for (size_t t = 0; t < s.tokens(); ++t) {
        const absl::Span<const float> row = token_logits(s, t);
        logits.insert(logits.end(), row.begin(), row.end());
      }
      auto routed = remote_->Route(s.layer, logits);
      ASSERT_TRUE(routed.ok()) << routed.status();
      ASSERT_TRUE(local_->engine().Route(s.layer, logits, &step).ok());
      ASSERT_THAT(step.batch.experts, ::testing::ElementsAreArray(routed->experts()));
      ASSERT_EQ(step.cache.evictions, Keys(routed->evictions()));
      ASSERT_EQ(step.cache.urgent, Keys(routed->urgent_page_ins()));
      std::set<uint32_t> missing;
      for (int u = 0; u < routed->experts_size(); ++u) {
        if (!routed->resident(u)) missing.insert(routed->experts(u));
      }
      hits_ += routed->experts_size() - missing.size();
      changed_ += step.batch.changed_tokens;
    }
  }

  RoutingTrace trace_;
  std::unique_ptr<RouterServer> server_;
  std::unique_ptr<Client> client_;
  uint64_t budget_ = 0;
  std::unique_ptr<WorkerCache> remote_;
  std::unique_ptr<InProcessWorker> local_;
  uint64_t steps_ = 0, evictions_ = 0, hits_ = 0, changed_ = 0;
};

TEST_F(SideBySideTest, DecidesAsRemoteRoutingOverTheSharedTrace) {
  trace_.runs.resize(std::min<size_t>(trace_.runs.size(), 6));
  ASSERT_NO_FATAL_FAILURE(Start(/*prefetch=*/false));
  ASSERT_NO_FATAL_FAILURE(RouteBothAlike());
  EXPECT_GT(evictions_, 0u);
  const uint64_t steps = steps_;
  // The service folded every step in, and its view of the worker is exact.
  ASSERT_TRUE(local_->Flush(absl::Seconds(30)));
  auto stats = client_->Stats("local", "w");
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->routed_tokens(), steps);
  auto view = client_->OpenCache("local", "w", budget_);
  ASSERT_TRUE(view.ok());
  std::vector<ExpertKey> held;
  for (const auto& [key, variant] : local_->engine().Residency()) held.push_back(key);
  EXPECT_EQ(Keys(view->resident()), held);
  EXPECT_GT(local_->control_stats().updates_received, 1u);
}

// The engines' own policies in the service: a model registered with a
// peer's policy decides for a remote worker as for an in-process one, step
// by step, and hits exactly as the offline replay of the same trace, back
// to back through one cache of the same budget.
class PeerSideBySideTest : public SideBySideTest,
                           public ::testing::WithParamInterface<const char*> {};

TEST_P(PeerSideBySideTest, ServiceAndInProcessWorkerHitAsTheReplay) {
  ASSERT_NO_FATAL_FAILURE(Start(/*prefetch=*/false, GetParam()));
  ASSERT_NO_FATAL_FAILURE(RouteBothAlike());
  EXPECT_GT(evictions_, 0u);
  ReplayOptions options;
  // llama.cpp's padding slot comes out of replay's budget (its engine sizes
  // slots from bytes); the service's cache is given slots.
  options.amount = budget_ / kExpertBytes + PeerPaddingSlots(GetParam());
  options.expert_bytes = kExpertBytes;
  options.policies = {GetParam()};
  options.peer_shapes = false;  // the service runs every peer as one pool
  auto replay = Replay(Concatenated(trace_), options);
  ASSERT_TRUE(replay.ok()) << replay.status();
  EXPECT_EQ(hits_, replay->rows[0].demand_hits);
  EXPECT_EQ(remote_->report().hits, hits_);
}

// Batched steps, several runs' tokens a step as `replay --batch` plays
// them: the service and the in-process engine decide alike, and the
// worker's hits are the batched replay's.
TEST_P(PeerSideBySideTest, BatchedStepsHitAsTheBatchedReplay) {
  trace_.runs.resize(std::min<size_t>(trace_.runs.size(), 12));
  ASSERT_NO_FATAL_FAILURE(Start(/*prefetch=*/false, GetParam()));
  std::vector<float> one(trace_.num_experts);
  ASSERT_NO_FATAL_FAILURE(
      RouteBatchesAlike(ReplaySchedule::Batched(trace_, 4), [&](const ReplayStep& s, size_t t) {
        LogitsForChoice(s.experts.subspan(t * trace_.top_k, trace_.top_k), one);
        return absl::MakeConstSpan(one);
      }));
  ReplayOptions options;
  options.amount = budget_ / kExpertBytes + PeerPaddingSlots(GetParam());
  options.expert_bytes = kExpertBytes;
  options.policies = {GetParam()};
  options.peer_shapes = false;
  options.batch = 4;
  auto replay = Replay(trace_, options);
  ASSERT_TRUE(replay.ok()) << replay.status();
  EXPECT_GT(replay->rows[0].demand_loads, 0u);
  EXPECT_EQ(hits_, replay->rows[0].demand_hits);
}

// Batched steps of a logits trace with the models' default router (its
// cache bonus on): each step's tokens routed together against the worker's
// cache, each by its own run's logits, as `replay --batch --bonus`
// reroutes them. The service and the in-process engine choose and evict
// alike, and the worker's hits and rerouted tokens are the batched
// replay's.
TEST_F(SideBySideTest, BatchedStepsWithTheBonusDecideAsTheBatchedReplay) {
  trace_ = GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/6, /*tokens=*/24,
                         /*seed=*/5);
  ASSERT_NO_FATAL_FAILURE(Start(/*prefetch=*/false));
  ASSERT_NO_FATAL_FAILURE(
      RouteBatchesAlike(ReplaySchedule::Batched(trace_, 4), [&](const ReplayStep& s, size_t t) {
        return trace_.StepLogits(trace_.runs[s.runs[t]], s.run_steps[t]);
      }));
  auto config = ConfigFromSpec(Spec("remote", trace_.num_layers, /*prefetch=*/false));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_GT(config->router.cache_bonus, 0);
  ReplayOptions options;
  options.amount = budget_ / kExpertBytes;
  options.expert_bytes = kExpertBytes;
  options.policies = {config->eviction_policy};
  options.router = config->router;
  options.batch = 4;
  auto replay = Replay(trace_, options);
  ASSERT_TRUE(replay.ok()) << replay.status();
  const ReplayRow& row = replay->rows[0];
  EXPECT_GT(row.demand_loads, 0u);
  EXPECT_EQ(hits_, row.demand_hits);
  EXPECT_GT(changed_, 0u);
  EXPECT_DOUBLE_EQ(
      static_cast<double>(changed_) / static_cast<double>(trace_.Tokens() * trace_.num_layers),
      row.changed_fraction);
}

INSTANTIATE_TEST_SUITE_P(Peers, PeerSideBySideTest,
                         ::testing::Values("llama_cpp", "llama_cpp_lru", "sglang", "vllm_lfru",
                                           "least_stale"));

// Prefetch on, over the shared trace, each mode on a model of its own: the
// in-process worker predicts the next layer from the fleet's strongest
// successors as last sent, the service from its whole matrix as of the
// call; their hit rates stay within 0.01.
TEST_F(SideBySideTest, PrefetchingHitRateMatchesRemoteRoutingOverTheSharedTrace) {
  ASSERT_NO_FATAL_FAILURE(Start(/*prefetch=*/true));
  std::vector<float> scratch;
  WorkerStep step;
  uint64_t hits = 0, accesses = 0, prefetched = 0;
  for (const RoutingTrace::Run& run : trace_.runs) {
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const uint32_t layer = run.steps[i].layer;
      const absl::Span<const float> logits = StepLogitsForServer(trace_, run, i, scratch);
      ASSERT_TRUE(remote_->Route(layer, logits).ok());
      ASSERT_TRUE(local_->engine().Route(layer, logits, &step).ok());
      for (uint8_t r : step.batch.resident) hits += r;
      accesses += step.batch.resident.size();
      prefetched += step.cache.prefetch.size();
    }
  }
  EXPECT_GT(prefetched, 0u);
  const double local_rate = static_cast<double>(hits) / accesses;
  EXPECT_NEAR(local_rate, remote_->report().HitRate(), 0.01)
      << "in process " << local_rate << ", remote " << remote_->report().HitRate();
}

// Two in-process workers and one remote worker on one model learn what the
// same calls, all remote, teach another: with decay 1 and routing that does
// not depend on what was learned (plain top-k), affinity, activation counts
// and co-activation agree exactly. (With decay below 1 the fold spreads a
// report's boosts over its window and folds its pairs at its end, so the
// values differ by the decay within one report interval, about 1 - decay^T
// for T tokens per report.) Each in-process worker takes the fleet's state.
TEST(InProcessWorkerTest, MixedFleetLearnsWhatAllRemoteRoutingLearns) {
  auto server = StartServer("127.0.0.1:0");
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", server->port()));
  ASSERT_TRUE(client.ok());
  const uint32_t layers = 4;
  for (const char* name : {"mixed", "remote"}) {
    v1::ModelSpec spec = Spec(name, layers, false);
    spec.mutable_router()->set_disable_memory_aware(true);
    spec.mutable_affinity()->set_decay(1);
    spec.mutable_affinity()->set_coactivation_decay(1);
    spec.mutable_affinity()->set_max_score(1e12);
    ASSERT_TRUE((*client)->Register(spec).ok());
  }
  const uint64_t budget = 8 * kExpertBytes;
  std::vector<std::unique_ptr<InProcessWorker>> local;
  for (int w = 0; w < 2; ++w) {
    auto worker = InProcessWorker::Start(Channel(server->port()),
                                         {.model = "mixed",
                                          .cache = absl::StrCat("w", w),
                                          .budget_bytes = budget,
                                          .report_interval = absl::Milliseconds(10)});
    ASSERT_TRUE(worker.ok()) << worker.status();
    local.push_back(*std::move(worker));
  }
  std::vector<std::unique_ptr<WorkerCache>> remote;
  for (const auto& [model, cache] : std::vector<std::pair<std::string, std::string>>{
           {"mixed", "w2"}, {"remote", "w0"}, {"remote", "w1"}, {"remote", "w2"}}) {
    auto worker =
        WorkerCache::Open(**client, {.model = model, .cache = cache, .budget_bytes = budget},
                          ServerExpertSource(**client, model));
    ASSERT_TRUE(worker.ok()) << worker.status();
    remote.push_back(*std::move(worker));
  }
  WorkerStep step;
  for (int b = 0; b < 30; ++b) {
    for (int w = 0; w < 3; ++w) {
      for (uint32_t l = 0; l < layers; ++l) {
        const std::vector<float> logits = testing::RandomLogits(3, 8, b * 100 + w * 10 + l);
        if (w < 2) {
          ASSERT_TRUE(local[w]->engine().Route(l, logits, &step).ok());
        } else {
          ASSERT_TRUE(remote[0]->Route(l, logits).ok());
        }
        ASSERT_TRUE(remote[1 + w]->Route(l, logits).ok());
      }
    }
  }
  for (auto& worker : local) ASSERT_TRUE(worker->Flush(absl::Seconds(30)));
  const auto state = [&](const std::string& model) {
    auto hosted = server->registry().Find(model);
    EXPECT_TRUE(hosted.ok());
    return nlohmann::json::parse((*hosted)->engine->ExportState());
  };
  const nlohmann::json mixed = state("mixed");
  const nlohmann::json all_remote = state("remote");
  for (uint32_t l = 0; l < layers; ++l) {
    SCOPED_TRACE(l);
    for (const char* field : {"affinity_scores", "activation_counts", "tokens"}) {
      EXPECT_EQ(mixed["layers"][l][field], all_remote["layers"][l][field]) << field;
    }
    if (l > 0) {
      EXPECT_EQ(mixed["layers"][l]["coactivation"], all_remote["layers"][l]["coactivation"]);
    }
  }
  for (auto& worker : local) EXPECT_GE(worker->engine().state_updates_applied(), layers);
}

// Reports keep a worker's view open; once the worker is gone, its view
// closes after the idle timeout like any other.
TEST(InProcessWorkerTest, ReportsKeepTheViewOpenUntilTheWorkerGoes) {
  ServerOptions options = testing::LocalServerOptions();
  options.registry.worker_caches.idle_timeout = absl::Milliseconds(300);
  auto server = RouterServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", (*server)->port()));
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Register(Spec("m", 4, true)).ok());
  auto worker = InProcessWorker::Start(Channel((*server)->port()),
                                       {.model = "m",
                                        .cache = "w",
                                        .budget_bytes = 8 * kExpertBytes,
                                        .report_interval = absl::Milliseconds(20)});
  ASSERT_TRUE(worker.ok()) << worker.status();
  // Three idle timeouts with nothing routed: the empty reports still count.
  absl::SleepFor(absl::Milliseconds(900));
  EXPECT_TRUE((*client)->Stats("m", "w").ok());
  worker->reset();
  EXPECT_TRUE(
      testing::WaitFor([&] { return absl::IsNotFound((*client)->Stats("m", "w").status()); }));
}

// Two in-process workers on one model: the service learns from both, and
// each receives what the fleet learned.
TEST(InProcessWorkerTest, TheFleetLearnsFromEveryWorker) {
  auto server = StartServer("127.0.0.1:0");
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", server->port()));
  ASSERT_TRUE(client.ok());
  const uint32_t layers = 4;
  ASSERT_TRUE((*client)->Register(Spec("m", layers, true)).ok());
  std::vector<std::unique_ptr<InProcessWorker>> workers;
  for (int w = 0; w < 2; ++w) {
    auto worker = InProcessWorker::Start(Channel(server->port()),
                                         {.model = "m",
                                          .cache = absl::StrCat("w", w),
                                          .budget_bytes = 8 * kExpertBytes,
                                          .report_interval = absl::Milliseconds(10)});
    ASSERT_TRUE(worker.ok()) << worker.status();
    workers.push_back(*std::move(worker));
  }
  WorkerStep step;
  uint64_t tokens = 0;
  for (int b = 0; b < 50; ++b) {
    for (int w = 0; w < 2; ++w) {
      for (uint32_t l = 0; l < layers; ++l) {
        const std::vector<float> logits = testing::RandomLogits(3, 8, b * 100 + w * 10 + l);
        ASSERT_TRUE(workers[w]->engine().Route(l, logits, &step).ok());
        tokens += 3;
      }
    }
  }
  for (auto& worker : workers) ASSERT_TRUE(worker->Flush(absl::Seconds(30)));
  auto stats = (*client)->Stats("m");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->routed_tokens(), tokens);
  EXPECT_EQ(stats->open_caches(), 2u);
  // Each worker heard of the other's tokens: its layer-0 router learned
  // from more tokens than it routed itself.
  for (auto& worker : workers) {
    ASSERT_TRUE(testing::WaitFor([&] {
      for (uint32_t l = 0; l < layers; ++l) {
        EXPECT_TRUE(worker->engine().Route(l, testing::RandomLogits(1, 8, l), &step).ok());
      }
      return worker->engine().state_updates_applied() >= layers;
    }));
  }
}

// A worker that joins after the fleet learned every layer starts from all
// of it: the hello's update carries every layer the service learned (it
// once skipped some, the turn's start moving as layers were added).
TEST(InProcessWorkerTest, AWorkerJoiningLaterStartsFromEveryLayerTheFleetLearned) {
  auto server = StartServer("127.0.0.1:0");
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", server->port()));
  ASSERT_TRUE(client.ok());
  const uint32_t layers = 6;
  ASSERT_TRUE((*client)->Register(Spec("m", layers, false)).ok());
  const auto start = [&](const std::string& cache) {
    auto worker = InProcessWorker::Start(
        Channel(server->port()), {.model = "m", .cache = cache, .budget_bytes = 8 * kExpertBytes});
    EXPECT_TRUE(worker.ok()) << worker.status();
    return worker.ok() ? *std::move(worker) : nullptr;
  };
  auto first = start("first");
  ASSERT_NE(first, nullptr);
  WorkerStep step;
  for (int b = 0; b < 5; ++b) {
    for (uint32_t l = 0; l < layers; ++l) {
      ASSERT_TRUE(first->engine().Route(l, testing::RandomLogits(3, 8, b * 10 + l), &step).ok());
    }
  }
  ASSERT_TRUE(first->Flush(absl::Seconds(30)));
  auto later = start("later");
  ASSERT_NE(later, nullptr);
  for (uint32_t l = 0; l < layers; ++l) {
    SCOPED_TRACE(absl::StrCat("layer ", l));
    ASSERT_TRUE(later->engine().Route(l, testing::RandomLogits(1, 8, 100 + l), &step).ok());
    // The fleet's 15 tokens, then its own one.
    EXPECT_EQ(later->engine().LayerAffinity(l).updates, 16u);
  }
}

// The service absent at start, then started; killed mid-run and restarted:
// routing never fails, the worker reconnects and resyncs its view.
TEST(InProcessWorkerTest, RoutesThroughAbsentAndRestartedService) {
  const int port = FreePort();
  const std::string listen = absl::StrCat("127.0.0.1:", port);
  const uint32_t layers = 4;
  auto config = ConfigFromSpec(Spec("m", layers, true));
  ASSERT_TRUE(config.ok());
  auto store = SyntheticStore::Create(
      {.num_layers = layers, .num_experts = 8, .variants = {{"default", kExpertBytes}}});
  ASSERT_TRUE(store.ok());
  auto sizes = ExpertSizeTable::Build(**store, layers, 8);
  ASSERT_TRUE(sizes.ok());
  auto worker = InProcessWorker::Start(Channel(port), {.model = "m",
                                                       .cache = "w",
                                                       .budget_bytes = 8 * kExpertBytes,
                                                       .report_interval = absl::Milliseconds(10),
                                                       .connect_timeout = absl::Milliseconds(200),
                                                       .max_backoff = absl::Milliseconds(200),
                                                       .local_model = *config,
                                                       .local_sizes = *sizes});
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE((*worker)->control_stats().started_without_service);
  WorkerStep step;
  const auto route_some = [&](int seed) {
    for (int b = 0; b < 20; ++b) {
      for (uint32_t l = 0; l < layers; ++l) {
        ASSERT_TRUE((*worker)
                        ->engine()
                        .Route(l, testing::RandomLogits(2, 8, seed * 1000 + b * 10 + l), &step)
                        .ok());
      }
    }
  };
  route_some(1);
  for (int round = 0; round < 2; ++round) {
    // Before the server starts: the worker may connect as soon as the model
    // is registered.
    const uint64_t connects = (*worker)->control_stats().connects;
    auto server = StartServer(listen);
    ASSERT_NE(server, nullptr);
    auto client = Client::Connect(listen);
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE((*client)->Register(Spec("m", layers, true)).ok());
    ASSERT_TRUE(testing::WaitFor([&] { return (*worker)->control_stats().connects > connects; }));
    route_some(2 + round);
    ASSERT_TRUE((*worker)->Flush(absl::Seconds(30)));
    // The new server's view is what the worker holds.
    auto view = (*client)->OpenCache("m", "w", 8 * kExpertBytes);
    ASSERT_TRUE(view.ok());
    std::vector<ExpertKey> held;
    for (const auto& [key, variant] : (*worker)->engine().Residency()) held.push_back(key);
    EXPECT_EQ(Keys(view->resident()), held);
    // The reports sent while it was away were folded in here: every token.
    auto stats = (*client)->Stats("m");
    ASSERT_TRUE(stats.ok());
    EXPECT_GT(stats->routed_tokens(), 0u);
    server->Shutdown(absl::Now());  // gone mid-run: the worker routes on
    server.reset();
    route_some(10 + round);
  }
  EXPECT_EQ((*worker)->control_stats().reports_dropped, 0u);
}

// Routes `batches` batches of 2 tokens through every layer;
// the tokens routed (over all layers).
uint64_t RouteBatches(InProcessWorker& worker, uint32_t layers, int batches, int seed) {
  WorkerStep step;
  uint64_t tokens = 0;
  for (int b = 0; b < batches; ++b) {
    for (uint32_t l = 0; l < layers; ++l) {
      EXPECT_TRUE(worker.engine()
                      .Route(l, testing::RandomLogits(2, 8, seed * 1000 + b * 10 + l), &step)
                      .ok());
      tokens += 2;
    }
  }
  return tokens;
}

uint64_t FoldedTokens(Client& client) {
  auto stats = client.Stats("m");
  EXPECT_TRUE(stats.ok()) << stats.status();
  return stats.ok() ? stats->routed_tokens() : 0;
}

// The service lives on while the worker's stream breaks after the service
// folded reports whose acknowledgements never arrived (the relay swallowed
// them): the worker offers them again on its next stream, and the service
// folds each report once.
TEST(InProcessWorkerTest, ReportsResentToAServiceThatLivedOnAreFoldedOnce) {
  auto server = StartServer("127.0.0.1:0");
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", server->port()));
  ASSERT_TRUE(client.ok());
  const uint32_t layers = 4;
  ASSERT_TRUE((*client)->Register(Spec("m", layers, false)).ok());
  testing::TcpRelay relay(server->port());
  auto worker = InProcessWorker::Start(Channel(relay.port()),
                                       {.model = "m",
                                        .cache = "w",
                                        .budget_bytes = 8 * kExpertBytes,
                                        .report_interval = absl::Milliseconds(10),
                                        .max_backoff = absl::Milliseconds(200),
                                        // The cut, not the watchdog, breaks the stream.
                                        .ack_timeout = absl::Minutes(5)});
  ASSERT_TRUE(worker.ok()) << worker.status();
  uint64_t routed = RouteBatches(**worker, layers, 10, 1);
  ASSERT_TRUE((*worker)->Flush(absl::Seconds(30)));
  ASSERT_EQ(FoldedTokens(**client), routed);

  relay.SwallowReplies(true);
  routed += RouteBatches(**worker, layers, 10, 2);
  // Folded, but the worker never hears of it.
  ASSERT_TRUE(testing::WaitFor([&] { return FoldedTokens(**client) == routed; }));
  EXPECT_LT((*worker)->control_stats().acknowledged, (*worker)->engine().last_sequence());
  const uint64_t connects = (*worker)->control_stats().connects;
  relay.CutAll();
  ASSERT_TRUE(testing::WaitFor([&] { return (*worker)->control_stats().connects > connects; }));

  routed += RouteBatches(**worker, layers, 10, 3);
  ASSERT_TRUE((*worker)->Flush(absl::Seconds(30)));
  EXPECT_EQ(FoldedTokens(**client), routed);
  EXPECT_EQ((*worker)->control_stats().reports_dropped, 0u);
}

// Reports the worker sent that never reached the service (the relay
// swallowed them) before the service went down: the worker sends them again
// to the service's next run, which folds each once, and nothing acknowledged
// before is sent again.
TEST(InProcessWorkerTest, ReportsAServiceNeverGotAreFoldedOnceByItsNextRun) {
  const int port = FreePort();
  const std::string listen = absl::StrCat("127.0.0.1:", port);
  const uint32_t layers = 4;
  auto server = StartServer(listen);
  ASSERT_NE(server, nullptr);
  auto client = Client::Connect(listen);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Register(Spec("m", layers, false)).ok());
  testing::TcpRelay relay(port);
  auto worker =
      InProcessWorker::Start(Channel(relay.port()), {.model = "m",
                                                     .cache = "w",
                                                     .budget_bytes = 8 * kExpertBytes,
                                                     .report_interval = absl::Milliseconds(10),
                                                     .connect_timeout = absl::Milliseconds(500),
                                                     .max_backoff = absl::Milliseconds(200),
                                                     .ack_timeout = absl::Minutes(5)});
  ASSERT_TRUE(worker.ok()) << worker.status();
  const uint64_t acknowledged_run = RouteBatches(**worker, layers, 10, 1);
  ASSERT_TRUE((*worker)->Flush(absl::Seconds(30)));
  ASSERT_EQ(FoldedTokens(**client), acknowledged_run);

  relay.SwallowRequests(true);
  const uint64_t sent = (*worker)->control_stats().reports_sent;
  const uint64_t unacknowledged = RouteBatches(**worker, layers, 10, 2);
  // Handed to the stream, never seen by the service.
  ASSERT_TRUE(testing::WaitFor([&] {
    const ControlStats c = (*worker)->control_stats();
    return c.reports_sent > sent + 1 && c.acknowledged < (*worker)->engine().last_sequence();
  }));
  EXPECT_EQ(FoldedTokens(**client), acknowledged_run);
  server->Shutdown(absl::Now());
  server.reset();
  relay.CutAll();

  server = StartServer(listen);
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE((*client)->Register(Spec("m", layers, false)).ok());
  ASSERT_TRUE((*worker)->Flush(absl::Seconds(30)));
  // The new run learned from the unacknowledged reports once each, and
  // from nothing acknowledged before.
  EXPECT_EQ(FoldedTokens(**client), unacknowledged);
  EXPECT_EQ((*worker)->control_stats().reports_dropped, 0u);
}

// A fleet update that arrives while some of the worker's reports are
// unacknowledged (here the hello's answer on a new stream, acknowledging
// only the reports before them) keeps the worker's own learning since then:
// the unacknowledged reports' activation counts are re-applied over the
// fleet's. The service pushes no state after the hello, so that update is
// the one the layer takes.
TEST(InProcessWorkerTest, AFleetUpdateKeepsTheWorkersUnacknowledgedLearning) {
  ServerOptions options = testing::LocalServerOptions();
  options.limits.learn_stream.min_push_interval = absl::Hours(1);
  auto server = RouterServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", (*server)->port()));
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Register(Spec("m", 4, false)).ok());
  testing::TcpRelay relay((*server)->port());
  auto worker =
      InProcessWorker::Start(Channel(relay.port()), {.model = "m",
                                                     .cache = "w",
                                                     .budget_bytes = 8 * kExpertBytes,
                                                     // Reports go only when flushed.
                                                     .report_interval = absl::Hours(1),
                                                     .max_backoff = absl::Milliseconds(200),
                                                     .ack_timeout = absl::Minutes(5)});
  ASSERT_TRUE(worker.ok()) << worker.status();
  WorkerEngine& engine = (*worker)->engine();
  WorkerStep step;
  auto route_layer0 = [&](int seed) {
    for (int b = 0; b < 20; ++b) {
      ASSERT_TRUE(engine.Route(0, testing::RandomLogits(2, 8, seed * 100 + b), &step).ok());
    }
  };
  route_layer0(1);
  ASSERT_TRUE((*worker)->Flush(absl::Seconds(30)));  // report 1, folded and acknowledged

  relay.SwallowRequests(true);
  route_layer0(2);
  const uint64_t sent = (*worker)->control_stats().reports_sent;
  EXPECT_FALSE((*worker)->Flush(absl::Milliseconds(200)));  // report 2 never arrives
  ASSERT_TRUE(testing::WaitFor([&] { return (*worker)->control_stats().reports_sent > sent; }));
  const std::vector<uint64_t> before = engine.LayerAffinity(0).counts;
  const uint64_t applied = engine.state_updates_applied();
  const uint64_t connects = (*worker)->control_stats().connects;
  relay.CutAll();
  // The new stream's hello is answered with the fleet's state as of report 1
  // (a flush wakes the control thread, which sleeps a report interval).
  ASSERT_TRUE(testing::WaitFor([&] {
    (*worker)->Flush(absl::Milliseconds(10));
    return (*worker)->control_stats().connects > connects;
  }));

  ASSERT_TRUE(engine.Route(0, testing::RandomLogits(2, 8, 999), &step).ok());
  ASSERT_GT(engine.state_updates_applied(), applied) << "the update was not taken";
  std::vector<uint64_t> expected = before;
  for (uint32_t e : step.batch.experts) ++expected[e];
  EXPECT_EQ(engine.LayerAffinity(0).counts, expected)
      << "the learning of the unacknowledged report was lost to the update";
}

}  // namespace
}  // namespace moe_router
