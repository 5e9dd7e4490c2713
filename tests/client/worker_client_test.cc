// Worker caches end to end: the real server on 127.0.0.1:0, WorkerCache
// clients over real channels, each really holding expert bytes.
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/server_replay.h"
#include "cli/worker_play.h"
#include "client/http_get.h"
#include "client/worker_cache.h"
#include "core/base/file_io.h"
#include "eval/replay.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr uint64_t kExpertBytes = 4096;
constexpr uint32_t kLayers = 8;

// Routing unchanged (plain top-k) and no prefetch: what the offline replay
// models.
v1::ModelSpec NoPrefetchSpec(const std::string& name) {
  v1::ModelSpec spec = testing::SyntheticSpec(name, kLayers, kExpertBytes, /*budget_experts=*/64);
  spec.set_prefetch_next_layer(0);
  spec.mutable_router()->set_disable_memory_aware(true);
  spec.mutable_router()->set_prefetch_threshold(0);
  return spec;
}

RoutingTrace SmallTrace(uint32_t sequences, uint64_t seed) {
  return GenerateTrace({.num_layers = kLayers, .num_experts = 8, .top_k = 2}, sequences,
                       /*tokens=*/30, seed);
}

std::vector<ExpertKey> Keys(const google::protobuf::RepeatedPtrField<v1::ExpertRef>& refs) {
  std::vector<ExpertKey> keys;
  for (const v1::ExpertRef& r : refs) keys.push_back({r.layer(), r.expert()});
  std::sort(keys.begin(), keys.end());
  return keys;
}

class WorkerCacheTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({.max_caches = 4}); }

  void Start(WorkerCacheLimits limits) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "127.0.0.1:0";
    options.health_listen = "";
    options.registry.worker_caches = limits;
    auto server = RouterServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(absl::StrCat("127.0.0.1:", server_->port()));
    ASSERT_TRUE(client.ok());
    client_ = *std::move(client);
  }

  std::unique_ptr<WorkerCache> OpenWorker(const std::string& model, const std::string& cache,
                                          uint64_t budget_experts, const std::string& policy) {
    auto opened = WorkerCache::Open(*client_,
                                    {.model = model,
                                     .cache = cache,
                                     .budget_bytes = budget_experts * kExpertBytes,
                                     .eviction_policy = policy},
                                    ServerExpertSource(*client_, model));
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? *std::move(opened) : nullptr;
  }

  // What the server's view of `cache` holds, read without changing it.
  std::vector<ExpertKey> ServerView(const std::string& model, const std::string& cache,
                                    uint64_t budget_bytes) {
    auto info = client_->OpenCache(model, cache, budget_bytes);
    EXPECT_TRUE(info.ok()) << info.status();
    EXPECT_FALSE(info->created());
    return Keys(info->resident());
  }

  std::unique_ptr<RouterServer> server_;
  std::unique_ptr<Client> client_;
};

// Two workers with different budgets and policies on one model at once:
// each one's bytes are exactly its view after every step, within budget,
// and each one's hit rate is the offline replay of its own runs.
TEST(ReplicaLostTest, AStreamCutWithItsReplicaIsLostAndTheServersAnswersAreNot) {
  EXPECT_TRUE(ReplicaLost(absl::UnavailableError("Socket closed")));
  EXPECT_TRUE(ReplicaLost(absl::DeadlineExceededError("Deadline Exceeded")));
  // What gRPC reports when the replica is killed mid-stream (grpc/grpc#34076).
  EXPECT_TRUE(ReplicaLost(absl::UnknownError("Stream removed")));
  EXPECT_FALSE(ReplicaLost(absl::UnknownError("unexpected")));
  EXPECT_FALSE(ReplicaLost(absl::NotFoundError("Stream removed")));
  EXPECT_FALSE(ReplicaLost(absl::DataLossError("checksum")));
}

TEST_F(WorkerCacheTest, ConcurrentWorkersEachMatchTheirOwnOfflineReplay) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  const RoutingTrace trace = SmallTrace(/*sequences=*/4, /*seed=*/3);
  struct Worker {
    std::string cache;
    uint64_t budget_experts;
    std::string policy;
    RoutingTrace part;
    double hit_rate = 0;
    double server_hit_rate = 0;
  };
  std::vector<Worker> workers = {{"pod-a.gpu0", 12, "lfu", SplitRoundRobin(trace, 2, 0)},
                                 {"pod-b.gpu0", 20, "layer_reuse", SplitRoundRobin(trace, 2, 1)}};
  std::vector<std::thread> threads;
  for (Worker& w : workers) {
    threads.emplace_back([&, w = &w] {
      std::unique_ptr<WorkerCache> cache = OpenWorker("m", w->cache, w->budget_experts, w->policy);
      ASSERT_NE(cache, nullptr);
      std::vector<float> scratch;
      for (const RoutingTrace::Run& run : w->part.runs) {
        for (size_t i = 0; i < run.steps.size(); ++i) {
          const uint32_t layer = run.steps[i].layer;
          auto routed = cache->Route(layer, StepLogitsForServer(w->part, run, i, scratch));
          ASSERT_TRUE(routed.ok()) << routed.status();
          for (ExpertKey evicted : Keys(routed->evictions())) {
            for (uint32_t e : routed->experts()) ASSERT_NE(evicted, (ExpertKey{layer, e}));
          }
          ASSERT_LE(cache->held_bytes(), cache->budget_bytes());
          ASSERT_EQ(cache->Held(), ServerView("m", w->cache, cache->budget_bytes()))
              << w->cache << " run " << run.name << " step " << i;
        }
      }
      w->hit_rate = cache->report().HitRate();
      auto stats = client_->Stats("m", w->cache);
      ASSERT_TRUE(stats.ok()) << stats.status();
      w->server_hit_rate = stats->hit_rate();
      EXPECT_EQ(stats->eviction_policy(), w->policy);
      EXPECT_LE(stats->resident_bytes(), stats->budget_bytes());
    });
  }
  for (std::thread& t : threads) t.join();
  for (const Worker& w : workers) {
    ReplayOptions options;
    options.mode = BudgetMode::kGlobalBytes;
    options.amount = w.budget_experts * kExpertBytes;
    options.expert_bytes = kExpertBytes;
    options.policies = {w.policy};
    auto offline = Replay(Concatenated(w.part), options);
    ASSERT_TRUE(offline.ok()) << offline.status();
    EXPECT_GT(w.hit_rate, 0.05) << w.cache;
    EXPECT_LT(w.hit_rate, 0.95) << w.cache;
    EXPECT_NEAR(w.hit_rate, offline->rows[0].hit_rate, 5e-4) << w.cache;
    EXPECT_DOUBLE_EQ(w.server_hit_rate, w.hit_rate) << w.cache;
  }
  EXPECT_NE(workers[0].hit_rate, workers[1].hit_rate);

  auto totals = client_->Stats("m");
  ASSERT_TRUE(totals.ok());
  EXPECT_EQ(totals->open_caches(), 2u);
  EXPECT_EQ(totals->workers().hits() + totals->workers().misses(), trace.Accesses());
  // Prometheus: per model, no per-cache label.
  const std::string metrics = HttpGet("127.0.0.1", server_->metrics_port(), "/metrics").value();
  EXPECT_THAT(metrics, HasSubstr("moe_router_worker_caches_open{model=\"m\"} 2"));
  EXPECT_THAT(metrics, HasSubstr(absl::StrCat("moe_router_worker_cache_hits_total{model=\"m\"} ",
                                              totals->workers().hits())));
  EXPECT_THAT(metrics, HasSubstr("moe_router_worker_eviction_instructions_total{model=\"m\"}"));
  EXPECT_THAT(metrics, Not(HasSubstr("pod-a")));
}

// Residency is per worker: what one holds says nothing of the other.
TEST_F(WorkerCacheTest, ResidencyAndInstructionsArePerCache) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  auto a = OpenWorker("m", "a", 4, "lru");
  auto b = OpenWorker("m", "b", 4, "lru");
  std::vector<float> logits(8);
  LogitsForChoice(std::vector<uint32_t>{3, 5}, logits);
  auto first = a->Route(0, logits);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->resident(0));
  EXPECT_EQ(Keys(first->urgent_page_ins()), (std::vector<ExpertKey>{{0, 3}, {0, 5}}));
  auto again = a->Route(0, logits);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->resident(0) && again->resident(1));
  EXPECT_THAT(again->urgent_page_ins(), IsEmpty());
  auto other = b->Route(0, logits);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->resident(0) || other->resident(1));
  EXPECT_EQ(Keys(other->urgent_page_ins()), (std::vector<ExpertKey>{{0, 3}, {0, 5}}));
  // Without a cache, the call is today's: about the server's own cache.
  auto plain = client_->Route("m", 0, logits);
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(plain->evictions(), IsEmpty());
}

// The server's cache is the tier behind the workers: what a worker is told
// to load is staged there, so its FetchExpert is served from memory.
TEST_F(WorkerCacheTest, FetchAfterAPageInInstructionIsServedFromServerMemory) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  ASSERT_TRUE(client_->OpenCache("m", "w", 4 * kExpertBytes).ok());
  std::vector<float> logits(8);
  LogitsForChoice(std::vector<uint32_t>{6, 1}, logits);
  auto routed = client_->Route("m", 2, logits, "w");
  ASSERT_TRUE(routed.ok());
  ASSERT_EQ(routed->urgent_page_ins_size(), 2);
  auto model = server_->registry().Find("m");
  ASSERT_TRUE(model.ok());
  ModelEngine& engine = *(*model)->engine;
  ASSERT_TRUE(testing::WaitFor([&] { return engine.cache().IsResident({2, 6}); }));
  auto fetched = client_->Fetch("m", 2, 6);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->bytes.size(), kExpertBytes);
  auto stats = client_->Stats("m");
  ASSERT_TRUE(stats.ok());
  std::map<std::string, uint64_t> samples;
  for (const v1::TierEstimate& t : stats->tiers()) samples[t.tier()] = t.samples();
  EXPECT_EQ(samples["server"], 1u);
  EXPECT_GE(samples["store"], 2u);
  EXPECT_EQ(samples.count("worker"), 1u);
}

// Co-activation pairs a worker's consecutive layers, not whichever call
// came last: interleaved workers teach the model what each alone would.
TEST_F(WorkerCacheTest, InterleavedWorkersLearnTheSameCoactivationAsAlone) {
  for (const char* name : {"interleaved", "alone"}) {
    v1::ModelSpec spec = NoPrefetchSpec(name);
    spec.mutable_affinity()->set_coactivation_decay(1.0);  // counts: order-free
    ASSERT_TRUE(client_->Register(spec).ok());
    for (const char* cache : {"a", "b"}) {
      ASSERT_TRUE(client_->OpenCache(name, cache, 64 * kExpertBytes).ok());
    }
  }
  const RoutingTrace trace = SmallTrace(/*sequences=*/2, /*seed=*/9);
  const RoutingTrace::Run& run_a = trace.runs[0];
  const RoutingTrace::Run& run_b = trace.runs[1];
  std::vector<float> scratch;
  const auto route = [&](const std::string& model, const std::string& cache,
                         const RoutingTrace::Run& run, size_t i) {
    auto routed = client_->Route(model, run.steps[i].layer,
                                 StepLogitsForServer(trace, run, i, scratch), cache);
    ASSERT_TRUE(routed.ok()) << routed.status();
  };
  for (size_t i = 0; i < run_a.steps.size(); ++i) {
    route("interleaved", "a", run_a, i);
    route("interleaved", "b", run_b, i);
  }
  for (size_t i = 0; i < run_a.steps.size(); ++i) route("alone", "a", run_a, i);
  for (size_t i = 0; i < run_b.steps.size(); ++i) route("alone", "b", run_b, i);

  const auto coactivation = [&](const std::string& model) {
    auto hosted = server_->registry().Find(model);
    EXPECT_TRUE(hosted.ok());
    const nlohmann::json state = nlohmann::json::parse((*hosted)->engine->ExportState());
    std::vector<std::vector<double>> layers;
    for (const auto& layer : state["layers"]) {
      if (layer.contains("coactivation")) layers.push_back(layer["coactivation"]);
    }
    return layers;
  };
  const auto learned = coactivation("interleaved");
  ASSERT_EQ(learned.size(), kLayers - 1);
  double pairs = 0;
  for (const auto& layer : learned) {
    for (double v : layer) pairs += v;
  }
  // Every token's consecutive layers: top-2 x top-2 pairs each.
  EXPECT_EQ(pairs, 2.0 * 30 * (kLayers - 1) * 4);
  EXPECT_EQ(learned, coactivation("alone"));
}

TEST_F(WorkerCacheTest, ResizeSyncCloseAndClearErrors) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  auto opened = client_->OpenCache("m", "w", 4 * kExpertBytes);
  ASSERT_TRUE(opened.ok());
  EXPECT_TRUE(opened->created());
  EXPECT_EQ(opened->eviction_policy(), "layer_reuse");  // the model's
  std::vector<float> logits(8);
  for (uint32_t layer = 0; layer < 2; ++layer) {
    LogitsForChoice(std::vector<uint32_t>{layer, layer + 4}, logits);
    ASSERT_TRUE(client_->Route("m", layer, logits, "w").ok());
  }
  // A smaller budget: two of the four must go, and the answer says which.
  auto shrunk = client_->OpenCache("m", "w", 2 * kExpertBytes);
  ASSERT_TRUE(shrunk.ok());
  EXPECT_FALSE(shrunk->created());
  EXPECT_EQ(shrunk->evictions_size(), 2);
  EXPECT_EQ(shrunk->resident_size(), 2);

  // The worker restarted with one expert: the server adopts it.
  v1::SyncCacheRequest sync;
  sync.set_model("m");
  sync.set_cache("w");
  v1::ExpertRef* ref = sync.add_resident();
  ref->set_layer(7);
  ref->set_expert(2);
  auto synced = client_->SyncCache(sync);
  ASSERT_TRUE(synced.ok()) << synced.status();
  EXPECT_EQ(Keys(synced->resident()), (std::vector<ExpertKey>{{7, 2}}));
  for (uint32_t e : {3u, 4u}) {
    v1::ExpertRef* more = sync.add_resident();
    more->set_layer(7);
    more->set_expert(e);
  }
  absl::Status over = client_->SyncCache(sync).status();
  EXPECT_TRUE(absl::IsInvalidArgument(over)) << over;
  EXPECT_THAT(over.message(), HasSubstr("12288 bytes, over its budget of 8192"));
  sync.mutable_resident(0)->set_expert(99);
  absl::Status bad_expert = client_->SyncCache(sync).status();
  EXPECT_TRUE(absl::IsInvalidArgument(bad_expert)) << bad_expert;
  EXPECT_THAT(bad_expert.message(), HasSubstr("expert 99 is out of range"));

  absl::Status small = client_->OpenCache("m", "tiny", kExpertBytes - 1).status();
  EXPECT_TRUE(absl::IsInvalidArgument(small)) << small;
  EXPECT_THAT(small.message(), HasSubstr("smaller than one expert"));
  absl::Status bad_name = client_->OpenCache("m", "../w", kExpertBytes).status();
  EXPECT_TRUE(absl::IsInvalidArgument(bad_name)) << bad_name;

  sync.mutable_resident(0)->set_expert(2);
  ASSERT_TRUE(client_->CloseCache("m", "w").ok());
  for (absl::Status s :
       {client_->Route("m", 0, logits, "w").status(), client_->Stats("m", "w").status(),
        client_->SyncCache(sync).status(), client_->CloseCache("m", "w")}) {
    EXPECT_TRUE(absl::IsNotFound(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr("no open cache 'w'"));
  }
  EXPECT_THAT(client_->Route("m", 0, logits, "w").status().message(),
              HasSubstr("open it with OpenCache"));
}

TEST_F(WorkerCacheTest, TooManyCachesIsResourceExhausted) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(client_->OpenCache("m", absl::StrCat("w", i), kExpertBytes).ok());
  }
  absl::Status fifth = client_->OpenCache("m", "w4", kExpertBytes).status();
  EXPECT_TRUE(absl::IsResourceExhausted(fifth)) << fifth;
  EXPECT_THAT(fifth.message(), HasSubstr("4 open caches"));
  // Reopening an open one is not a new cache.
  EXPECT_TRUE(client_->OpenCache("m", "w0", kExpertBytes).ok());
}

TEST_F(WorkerCacheTest, IdleCachesExpire) {
  server_.reset();
  Start({.idle_timeout = absl::Milliseconds(200)});
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  ASSERT_TRUE(client_->OpenCache("m", "idle", kExpertBytes).ok());
  EXPECT_TRUE(
      testing::WaitFor([&] { return absl::IsNotFound(client_->Stats("m", "idle").status()); }));
  auto stats = client_->Stats("m");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->open_caches(), 0u);
}

// A worker prefetching by its guess of a layer's gate gets the guess's top
// experts, loads them and holds them.
TEST_F(WorkerCacheTest, PrefetchByGateGuessLoadsIntoTheWorker) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  auto worker = OpenWorker("m", "w", 4, "");
  const std::vector<float> guess = {0, 0.5f, 0, 0, 0, 3, 2, 0};
  auto answer = worker->Prefetch(4, guess, /*budget=*/2);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_THAT(std::vector<uint32_t>(answer->queued().begin(), answer->queued().end()),
              ::testing::ElementsAre(5, 6));
  EXPECT_EQ(worker->Held(), (std::vector<ExpertKey>{{4, 5}, {4, 6}}));
  EXPECT_EQ(worker->Held(), ServerView("m", "w", 4 * kExpertBytes));
  auto again = worker->Prefetch(4, guess, 2);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->already_resident_size(), 2);
  absl::Status wrong = worker->Prefetch(4, std::vector<float>(3), 2).status();
  EXPECT_TRUE(absl::IsInvalidArgument(wrong)) << wrong;
  EXPECT_THAT(wrong.message(), HasSubstr("gate_logits has 3 values"));
}

// The Python WorkerCache (Debian's python3-grpcio) gets the same answers
// as the C++ one over the same steps, and holds the same experts.
TEST_F(WorkerCacheTest, PythonWorkerCacheMatchesTheCppOne) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  const RoutingTrace trace = SmallTrace(/*sequences=*/1, /*seed=*/11);
  const RoutingTrace::Run& run = trace.runs[0];
  nlohmann::json steps = nlohmann::json::array();
  const size_t count = std::min<size_t>(run.steps.size(), 120);
  for (size_t i = 0; i < count; ++i) {
    const auto logits = trace.StepLogits(run, i);
    steps.push_back({run.steps[i].layer, std::vector<float>(logits.begin(), logits.end())});
  }
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.File("steps.json"), steps.dump()).ok());
  const uint64_t budget = 6 * kExpertBytes;
  const testing::CommandResult python = testing::RunCommand(
      absl::StrCat("/usr/bin/python3 ", PY_WORKER, " ", PY_PACKAGE_DIR,
                   " 127.0.0.1:", server_->port(), " m py ", budget, " ", dir.File("steps.json")));
  ASSERT_EQ(python.exit_code, 0) << python.output;
  std::vector<nlohmann::json> answers;
  for (absl::string_view line : absl::StrSplit(python.output, '\n', absl::SkipEmpty())) {
    answers.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(answers.size(), count) << python.output;

  auto cpp = OpenWorker("m", "cpp", 6, "");
  const auto pairs = [](const auto& keys) {
    std::vector<std::vector<uint32_t>> out;
    for (const ExpertKey& k : keys) out.push_back({k.layer, k.expert});
    return out;
  };
  uint64_t loads = 0;
  for (size_t i = 0; i < count; ++i) {
    auto routed = cpp->Route(run.steps[i].layer, trace.StepLogits(run, i));
    ASSERT_TRUE(routed.ok()) << routed.status();
    const nlohmann::json& py = answers[i];
    EXPECT_EQ(py["experts"].get<std::vector<uint32_t>>(),
              std::vector<uint32_t>(routed->experts().begin(), routed->experts().end()));
    EXPECT_EQ(py["resident"].get<std::vector<bool>>(),
              std::vector<bool>(routed->resident().begin(), routed->resident().end()));
    EXPECT_EQ(py["urgent"].get<std::vector<std::vector<uint32_t>>>(),
              pairs(Keys(routed->urgent_page_ins())));
    EXPECT_EQ(py["evictions"].get<std::vector<std::vector<uint32_t>>>(),
              pairs(Keys(routed->evictions())));
    ASSERT_EQ(py["held"].get<std::vector<std::vector<uint32_t>>>(), pairs(cpp->Held()))
        << "step " << i;
    EXPECT_EQ(py["held_bytes"].get<uint64_t>(), cpp->held_bytes());
    loads += routed->urgent_page_ins_size();
  }
  EXPECT_GT(loads, 10u);
  EXPECT_GT(cpp->report().evictions, 0u);
}

// moe-router worker: the CLI plays the workers and compares each with the
// offline replay of its runs.
TEST_F(WorkerCacheTest, WorkerCommandMatchesTheOfflineReplay) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  testing::TempDir dir;
  const std::string trace_path = dir.path() + "/trace.bin";
  ASSERT_TRUE(WriteLogitsTrace(trace_path, SmallTrace(3, 5)).ok());
  const testing::CommandResult run = testing::RunCommand(
      absl::StrCat(MOE_ROUTER_CLI_PATH, " worker ", trace_path,
                   " --server 127.0.0.1:", server_->port(), " --model m --cache-bytes ",
                   10 * kExpertBytes, " --workers 2 --policy lfu --compare --json"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json out = nlohmann::json::parse(run.output.substr(run.output.find('{')));
  ASSERT_EQ(out["workers"].size(), 2u);
  EXPECT_EQ(out["workers"][0]["runs"], 2);
  for (const auto& w : out["workers"]) {
    EXPECT_GT(w["loads"].get<uint64_t>(), 0u);
    EXPECT_EQ(w["loaded_bytes"].get<uint64_t>(), w["loads"].get<uint64_t>() * kExpertBytes);
    EXPECT_NEAR(w["hit_rate"].get<double>(), w["replay_hit_rate"].get<double>(), 5e-4);
  }
  // Closed at the end.
  auto stats = client_->Stats("m");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->open_caches(), 0u);
}

// --in-process --compare: the same workers routing remotely and in this
// process. Without prefetch and with the router unchanged, both modes make
// the same decisions, so their figures agree exactly; only the in-process
// rows have control traffic, and the replay says what it models. The bonus
// is absolute: a relative one follows the model's running logit range, which
// concurrent workers move in an order the threads decide.
TEST_F(WorkerCacheTest, WorkerCommandComparesInProcessWithRemoteRouting) {
  v1::ModelSpec spec = NoPrefetchSpec("m");
  spec.mutable_router()->set_disable_memory_aware(false);
  spec.mutable_router()->set_absolute_bonus(true);
  spec.mutable_router()->set_cache_bonus(1.0);
  ASSERT_TRUE(client_->Register(spec).ok());
  testing::TempDir dir;
  const std::string trace_path = dir.path() + "/trace.bin";
  ASSERT_TRUE(WriteLogitsTrace(trace_path, SmallTrace(2, 9)).ok());
  const testing::CommandResult run = testing::RunCommand(
      absl::StrCat(MOE_ROUTER_CLI_PATH, " worker ", trace_path,
                   " --server 127.0.0.1:", server_->port(), " --model m --cache-bytes ",
                   10 * kExpertBytes, " --workers 2 --in-process --compare --json"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json out = nlohmann::json::parse(run.output.substr(run.output.find('{')));
  EXPECT_EQ(out["replay"], "demand only");
  ASSERT_EQ(out["workers"].size(), 4u);
  for (int w = 0; w < 2; ++w) {
    const nlohmann::json& remote = out["workers"][w];
    const nlohmann::json& local = out["workers"][w + 2];
    EXPECT_EQ(remote["mode"], "remote");
    EXPECT_EQ(local["mode"], "in_process");
    for (const char* field : {"hit_rate", "loads", "evictions", "accesses", "tokens"}) {
      EXPECT_EQ(local[field], remote[field]) << field;
    }
    EXPECT_GT(local["route_us_p50"].get<double>(), 0);
    EXPECT_GE(local["route_us_p99"].get<double>(), local["route_us_p50"].get<double>());
    EXPECT_GT(local["control_bytes_up_per_second"].get<double>(), 0);
    EXPECT_GT(local["control_bytes_down_per_second"].get<double>(), 0);
    EXPECT_EQ(remote["control_bytes_up_per_second"].get<double>(), 0);
    // The replay routes plain top-k; these workers route with the bonus.
    EXPECT_TRUE(local.contains("replay_hit_rate"));
  }
  auto stats = client_->Stats("m");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->open_caches(), 0u);
  // Both modes' tokens reached the model's learned state (top-2: two
  // accesses a token).
  uint64_t tokens = 0;
  for (const auto& w : out["workers"]) tokens += w["accesses"].get<uint64_t>() / 2;
  EXPECT_EQ(stats->routed_tokens(), tokens);
}

// A worker that reaches a replica which does not know its cache (it moved,
// or the cache expired) reopens it, states what it holds and repeats the
// call: the step does not fail and the new view is what the worker holds.
// C++ WorkerCache and the Python package alike.
TEST_F(WorkerCacheTest, AWorkerWhoseCacheIsUnknownReopensItAndCarriesOn) {
  ASSERT_TRUE(client_->Register(NoPrefetchSpec("m")).ok());
  auto cache = OpenWorker("m", "w", 6, "");
  ASSERT_NE(cache, nullptr);
  for (uint32_t l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(cache->Route(l, testing::RandomLogits(2, 8, l)).ok());
  }
  ASSERT_FALSE(cache->Held().empty());
  ASSERT_TRUE(client_->CloseCache("m", "w").ok());  // as a replica that never saw it
  auto routed = cache->Route(0, testing::RandomLogits(2, 8, 99));
  ASSERT_TRUE(routed.ok()) << routed.status();
  EXPECT_EQ(cache->report().reopens, 1u);
  std::vector<ExpertKey> held = cache->Held();
  std::sort(held.begin(), held.end());
  EXPECT_EQ(ServerView("m", "w", 6 * kExpertBytes), held);

  const std::string script = absl::StrCat(
      "import sys; sys.path.insert(0, '", PY_PACKAGE_DIR, "')\n", "import grpc\n",
      "from moe_router import WorkerCache\n", "from moe_router.v1 import moe_router_pb2 as pb\n",
      "channel = grpc.insecure_channel('127.0.0.1:", server_->port(), "')\n",
      "cache = WorkerCache(channel, 'm', 'py', ", 6 * kExpertBytes, ")\n",
      "cache.route(0, [float(i) for i in range(16)])\n",
      "cache.stub.CloseCache(pb.CloseCacheRequest(model='m', cache='py'))\n",
      "cache.route(1, [float(i) for i in range(16)])\n",
      "assert cache.reopens == 1, cache.reopens\n",
      "info = cache.stub.OpenCache(pb.OpenCacheRequest(model='m', cache='py', budget_bytes=",
      6 * kExpertBytes, "))\n",
      "assert sorted((r.layer, r.expert) for r in info.resident) == sorted(cache.held), info\n",
      "print('ok')\n");
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.File("moved.py"), script).ok());
  const testing::CommandResult run =
      testing::RunCommand(absl::StrCat("/usr/bin/python3 ", dir.File("moved.py")));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("ok"));
}

// --fetch DIR: workers load from their own copy of the checkpoint, checked
// against its manifest, and never call FetchExpert.
TEST_F(WorkerCacheTest, WorkerCommandLoadsFromALocalCheckpoint) {
  testing::TempDir dir;
  constexpr uint32_t kRows = 100;
  constexpr uint64_t kBytes = 3 * kRows * 8 * 2;  // w1, w2, w3 of BF16 {rows, 8}
  testing::WriteExpertShard(dir.File("model.safetensors"), 4, 4, kRows, 5,
                            "model.layers.{layer}.block_sparse_moe.experts.{expert}.");
  v1::ModelSpec spec = testing::SyntheticSpec("st", 4, kBytes, 16);
  spec.set_num_experts(4);
  spec.mutable_safetensors()->set_directory(dir.path());
  spec.mutable_safetensors()->set_name_preset("mixtral");
  spec.set_prefetch_next_layer(0);
  ASSERT_TRUE(client_->Register(spec).ok());
  const std::string trace_path = dir.File("trace.bin");
  ASSERT_TRUE(
      WriteLogitsTrace(trace_path,
                       GenerateTrace({.num_layers = 4, .num_experts = 4, .top_k = 2}, 2, 20, 7))
          .ok());
  const testing::CommandResult run = testing::RunCommand(absl::StrCat(
      MOE_ROUTER_CLI_PATH, " worker ", trace_path, " --server 127.0.0.1:", server_->port(),
      " --model st --cache-bytes ", 5 * kBytes, " --fetch ", dir.path(), " --json"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json out = nlohmann::json::parse(run.output.substr(run.output.find('{')));
  const auto& w = out["workers"][0];
  EXPECT_GT(w["loads"].get<uint64_t>(), 0u);
  EXPECT_EQ(w["loaded_bytes"].get<uint64_t>(), w["loads"].get<uint64_t>() * kBytes);
  auto stats = client_->Stats("st");
  ASSERT_TRUE(stats.ok());
  for (const v1::TierEstimate& tier : stats->tiers()) {
    if (tier.tier() == "server") {
      EXPECT_EQ(tier.samples(), 0u);
    }
  }
}

}  // namespace
}  // namespace moe_router
