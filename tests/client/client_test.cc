// The C++ client and the moe-router CLI against a real server on port 0.
#include "client/client.h"

#include <map>

#include "absl/strings/str_format.h"
#include "core/base/file_io.h"
#include "core/store/safetensors.h"
#include "core/store/safetensors_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    auto server = RouterServer::Start(options);
    ASSERT_TRUE(server.ok());
    server_ = *std::move(server);
    ASSERT_TRUE(server_->registry().Register(testing::SyntheticSpec("tiny", 2, 3000, 8)).ok());
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    client_ = *Client::Connect(address_);
  }

  // Runs the CLI; its output (stdout and stderr) and exit code.
  std::pair<std::string, int> Cli(const std::string& args) {
    const testing::CommandResult r =
        testing::RunCommand(std::string(MOE_ROUTER_CLI_PATH) + " " + args);
    return {r.output, r.exit_code};
  }

  std::unique_ptr<RouterServer> server_;
  std::string address_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientTest, TypedCallsAndStatuses) {
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok());
  ASSERT_EQ(models->size(), 1u);
  auto routed = client_->Route("tiny", 1, std::vector<float>{0, 0, 9, 0, 0, 8, 0, 0});
  ASSERT_TRUE(routed.ok()) << routed.status();
  EXPECT_THAT(routed->experts(), ::testing::ElementsAre(2u, 5u));
  auto missing = client_->Route("ghost", 0, std::vector<float>(8, 0));
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  auto fetched = client_->Fetch("tiny", 1, 4);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(fetched->bytes.size(), 3000u);
  EXPECT_EQ(fetched->header.tensors_size(), 3);
  auto stats = client_->Stats("tiny");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->routed_tokens(), 1u);
  EXPECT_TRUE(client_->Unregister("tiny").ok());
  EXPECT_TRUE(absl::IsNotFound(client_->Stats("tiny").status()));
}

TEST_F(ClientTest, CliCommands) {
  auto [models, code] = Cli("models --server " + address_);
  EXPECT_EQ(code, 0) << models;
  EXPECT_THAT(models, HasSubstr("tiny"));
  auto [routed, route_code] =
      Cli("route --server " + address_ + " --model tiny --layer 1 --tokens 3");
  EXPECT_EQ(route_code, 0) << routed;
  EXPECT_THAT(routed, HasSubstr("rerouted"));
  auto [stats, stats_code] = Cli("stats --server " + address_ + " --model tiny");
  EXPECT_EQ(stats_code, 0) << stats;
  EXPECT_THAT(stats, HasSubstr("hit rate"));
  testing::TempDir dir;
  auto [fetched, fetch_code] =
      Cli("fetch --server " + address_ + " --model tiny --layer 0 --expert 3 --out " +
          dir.File("e.safetensors"));
  EXPECT_EQ(fetch_code, 0) << fetched;
  EXPECT_THAT(fetched, HasSubstr("checksums verified"));
  auto header = ReadSafetensorsHeader(dir.File("e.safetensors"));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->tensors.size(), 3u);
  auto [bad, bad_code] = Cli("route --server " + address_ + " --model ghost");
  EXPECT_EQ(bad_code, 1);
  EXPECT_THAT(bad, HasSubstr("no model named 'ghost'"));
}

// Every command answers --help with its own flags, on stdout, exit 0, as
// `moe-router --help` says; a wrong flag is still an error.
TEST_F(ClientTest, CliCommandsAnswerHelp) {
  for (const std::string command :
       {"demo", "replay", "trace stats", "tracegen", "sweep", "index", "models", "register",
        "route", "prefetch", "stats", "fetch", "loadgen", "worker", "soak"}) {
    SCOPED_TRACE(command);
    const auto [out, code] = Cli(command + " --help");
    EXPECT_EQ(code, 0) << out;
    EXPECT_THAT(out, HasSubstr("usage: moe-router " + command));
    EXPECT_THAT(out, HasSubstr("flags:"));
    EXPECT_THAT(out, Not(HasSubstr("unknown flag")));
  }
  const auto [out, code] = Cli("worker --no-such-flag");
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("unknown flag --no-such-flag"));
}

TEST_F(ClientTest, CliTraceStats) {
  testing::TempDir dir;
  // One layer, three tokens: {0,1} -> {1,2} -> {3,2}.
  ASSERT_TRUE(WriteFileAtomically(dir.File("t.jsonl"),
                                  "{\"layer\":0,\"experts\":[0,1],\"token_idx\":0}\n"
                                  "{\"layer\":0,\"experts\":[1,2],\"token_idx\":1}\n"
                                  "{\"layer\":0,\"experts\":[3,2],\"token_idx\":2}\n")
                  .ok());
  const auto [table, code] = Cli("trace stats " + dir.File("t.jsonl"));
  EXPECT_EQ(code, 0) << table;
  EXPECT_THAT(table, HasSubstr("1 runs, 3 tokens (0 marked prompt), 1 layers x 4 experts, top-2"));
  EXPECT_THAT(table, HasSubstr("     0    0.500    0.333      0.333"));
  const auto [json, json_code] = Cli("trace stats --json " + dir.File("t.jsonl"));
  ASSERT_EQ(json_code, 0) << json;
  const nlohmann::json stats = nlohmann::json::parse(json);
  EXPECT_DOUBLE_EQ(stats["reuse_mean"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(stats["busiest_share_mean"].get<double>(), 2.0 / 6);
  const auto [missing, missing_code] = Cli("trace stats " + dir.File("none.jsonl"));
  EXPECT_EQ(missing_code, 1);
  EXPECT_THAT(missing, HasSubstr("none.jsonl"));
}

// replay --budgets gives, per budget, what a single replay at that budget
// gives, and plots it.
TEST_F(ClientTest, CliReplayBudgetsMatchSingleReplays) {
  testing::TempDir dir;
  std::string text;
  for (int t = 0; t < 12; ++t) {
    for (int l = 0; l < 2; ++l) {
      text += absl::StrFormat(R"({"layer":%d,"experts":[%d,%d],"token_idx":%d})", l, (t * 3) % 8,
                              (t + l) % 8 == (t * 3) % 8 ? (t + l + 1) % 8 : (t + l) % 8, t) +
              "\n";
    }
  }
  ASSERT_TRUE(WriteFileAtomically(dir.File("t.jsonl"), text).ok());
  const std::string trace = dir.File("t.jsonl");
  // 25% of 16 experts is 4 slots.
  const auto [swept, code] =
      Cli("replay " + trace + " --budgets 25%,8 --json --plot " + dir.File("p.svg"));
  ASSERT_EQ(code, 0) << swept;
  const nlohmann::json swept_report = nlohmann::json::parse(swept.substr(swept.find('{')));
  const nlohmann::json& rows = swept_report["rows"];
  int compared = 0;
  for (int slots : {4, 8}) {
    const auto [single, single_code] =
        Cli("replay " + trace + " --global-slots " + std::to_string(slots) + " --json");
    ASSERT_EQ(single_code, 0) << single;
    const nlohmann::json single_report = nlohmann::json::parse(single.substr(single.find('{')));
    for (const nlohmann::json& r : single_report["rows"]) {
      for (const nlohmann::json& s : rows) {
        if (s["policy"] != r["policy"] || s["budget_slots"].get<int>() != slots) continue;
        EXPECT_DOUBLE_EQ(s["hit_rate"].get<double>(), r["hit_rate"].get<double>()) << s;
        ++compared;
      }
    }
  }
  EXPECT_GE(compared, 10);  // every policy, and Belady, at both budgets
  auto svg = ReadFile(dir.File("p.svg"));
  ASSERT_TRUE(svg.ok());
  EXPECT_THAT(*svg, HasSubstr("<svg"));
  EXPECT_THAT(*svg, HasSubstr("belady"));
  EXPECT_EQ(Cli("replay " + trace + " --budgets 0").second, 2);
  EXPECT_EQ(Cli("replay " + trace + " --budgets 10 --global-slots 4").second, 2);
}

// --peers adds the engines' policies to ours, marks them, and sets every
// row against belady and the best peer of its budget; the plot dashes the
// peers.
TEST_F(ClientTest, CliReplayPeersSetsOursBesideTheEnginesCaches) {
  const std::string shared = testing::SharedTracePath();
  if (shared.empty()) GTEST_SKIP() << "shared trace not present";
  testing::TempDir dir;
  const auto [out, code] =
      Cli("replay " + shared + " --budgets 50% --peers --json --plot " + dir.File("p.svg"));
  ASSERT_EQ(code, 0) << out;
  const nlohmann::json report = nlohmann::json::parse(out.substr(out.find('{')));
  std::map<std::string, nlohmann::json> by_policy;
  for (const nlohmann::json& r : report["rows"]) by_policy[r["policy"].get<std::string>()] = r;
  for (const char* peer : {"llama_cpp", "llama_cpp_lru", "sglang", "vllm_lfru", "least_stale"}) {
    ASSERT_TRUE(by_policy.count(peer)) << peer;
    EXPECT_TRUE(by_policy[peer]["peer"].get<bool>());
  }
  ASSERT_TRUE(by_policy.count("layer_reuse") && by_policy.count("belady"));
  EXPECT_FALSE(by_policy["layer_reuse"]["peer"].get<bool>());
  double best_peer = 0;
  for (const auto& [name, r] : by_policy) {
    if (r["peer"].get<bool>()) best_peer = std::max(best_peer, r["hit_rate"].get<double>());
  }
  const double belady = by_policy["belady"]["hit_rate"].get<double>();
  const nlohmann::json& ours = by_policy["layer_reuse"];
  EXPECT_NEAR(ours["to_belady"].get<double>(), belady - ours["hit_rate"].get<double>(), 1e-12);
  EXPECT_NEAR(ours["gap_closed"].get<double>(),
              (ours["hit_rate"].get<double>() - best_peer) / (belady - best_peer), 1e-12);
  EXPECT_DOUBLE_EQ(by_policy["belady"]["gap_closed"].get<double>(), 1.0);
  auto svg = ReadFile(dir.File("p.svg"));
  ASSERT_TRUE(svg.ok());
  EXPECT_THAT(*svg, HasSubstr("sglang"));
  EXPECT_THAT(*svg, HasSubstr("stroke-dasharray=\"7,4\""));
  // Without --peers, ours only.
  const auto [plain, plain_code] = Cli("replay " + shared + " --global-slots 128");
  ASSERT_EQ(plain_code, 0) << plain;
  EXPECT_THAT(plain, ::testing::Not(HasSubstr("sglang")));
  EXPECT_THAT(plain, ::testing::Not(HasSubstr("gap_closed")));
}

// The tables mark the default policy with a star and say what it means;
// without the default among the rows, neither appears.
TEST_F(ClientTest, CliReplayTablesMarkTheDefaultPolicy) {
  testing::TempDir dir;
  const std::string trace = dir.File("t.jsonl");
  ASSERT_EQ(
      Cli("tracegen --preset mixtral --sequences 1 --tokens 20 --seed 2 --out " + trace).second, 0);
  const std::string footnote = "* the default: what a deployment evicts by";
  for (const std::string budget : {" --global-slots 64", " --budgets 25%,50%"}) {
    const auto [out, code] = Cli("replay " + trace + budget);
    ASSERT_EQ(code, 0) << out;
    EXPECT_THAT(out, HasSubstr("layer_reuse* ")) << budget;
    EXPECT_THAT(out, HasSubstr(footnote)) << budget;
    EXPECT_THAT(out, ::testing::Not(HasSubstr("lru* "))) << budget;
    const auto [lru, lru_code] = Cli("replay " + trace + budget + " --policy lru");
    ASSERT_EQ(lru_code, 0) << lru;
    EXPECT_THAT(lru, ::testing::Not(HasSubstr(footnote))) << budget;
  }
}

// --hardware prices every row in ms per token: in the JSON rows of a sweep
// belady costs least, a refused peer has no figure, and --time-plot draws
// it; its tuning flags need --hardware.
TEST_F(ClientTest, CliReplayEstimatesMillisecondsPerToken) {
  testing::TempDir dir;
  const std::string trace = dir.File("t.jsonl");
  ASSERT_EQ(
      Cli("tracegen --preset mixtral --sequences 2 --tokens 30 --seed 4 --out " + trace).second, 0);
  const std::string flags =
      " --budgets 10%,50%,75% --peers --hardware pcie5-x16 --expert-bytes 50000000 "
      "--compute-us 250";
  const auto [out, code] = Cli("replay " + trace + flags + " --json");
  ASSERT_EQ(code, 0) << out;
  std::map<std::string, std::map<uint64_t, nlohmann::json>> rows;
  const nlohmann::json report = nlohmann::json::parse(out.substr(out.find('{')));
  for (const nlohmann::json& r : report["rows"]) {
    rows[r["policy"].get<std::string>()][r["budget_slots"].get<uint64_t>()] = r;
  }
  // At 10%, fewer slots than layers: none per layer, and vLLM refuses.
  ASSERT_EQ(rows["vllm_lfru"].size(), 3u);
  const nlohmann::json& smallest = rows["vllm_lfru"].begin()->second;
  EXPECT_TRUE(smallest.contains("refused")) << smallest;
  EXPECT_FALSE(smallest.contains("ms_per_token"));
  for (const auto& [policy, by_budget] : rows) {
    for (const auto& [budget, r] : by_budget) {
      if (r.contains("refused")) continue;
      const double ms = r["ms_per_token"].get<double>();
      // At least 32 layers of 250 us; without prefetch time grows with the
      // misses alone, so belady, which misses least, is never slower.
      EXPECT_GE(ms, 32 * 0.25) << policy << " " << budget;
      EXPECT_LE(rows["belady"].at(budget)["ms_per_token"].get<double>(), ms) << policy;
    }
  }
  const std::string plot = dir.File("time.svg");
  const auto [table, table_code] = Cli("replay " + trace + flags + " --time-plot " + plot);
  ASSERT_EQ(table_code, 0) << table;
  EXPECT_THAT(table, HasSubstr(" ms/token "));
  auto svg = ReadFile(plot);
  ASSERT_TRUE(svg.ok()) << svg.status();
  EXPECT_THAT(*svg, HasSubstr("ms per token"));
  const auto [refused, refused_code] = Cli("replay " + trace + " --global-slots 64 --compute-us 9");
  EXPECT_EQ(refused_code, 2);
  EXPECT_THAT(refused, HasSubstr("--compute-us needs --hardware"));
}

// With --bonus our policies reroute against their cache while belady and
// the peers page the trace's own routing, so every row is still set against
// both, and the rerouted rows show the gate mass they kept.
TEST_F(ClientTest, CliReplayPeersBesideCacheAwareRouting) {
  testing::TempDir dir;
  const std::string trace = dir.File("t.jsonl");
  const auto [gen, gen_code] =
      Cli("tracegen --preset mixtral --sequences 2 --tokens 40 --seed 3 --out " + trace);
  ASSERT_EQ(gen_code, 0) << gen;
  const auto [out, code] = Cli("replay " + trace + " --budgets 50% --peers --bonus 0.3 --json");
  ASSERT_EQ(code, 0) << out;
  const nlohmann::json report = nlohmann::json::parse(out.substr(out.find('{')));
  std::map<std::string, nlohmann::json> by_policy;
  for (const nlohmann::json& r : report["rows"]) by_policy[r["policy"].get<std::string>()] = r;
  ASSERT_TRUE(by_policy.count("belady") && by_policy.count("llama_cpp") &&
              by_policy.count("layer_reuse"));
  // The default a fresh deployment gets is marked, and only it.
  for (const auto& [name, r] : by_policy) {
    EXPECT_EQ(r["default"].get<bool>(), name == "layer_reuse") << name;
  }
  EXPECT_DOUBLE_EQ(by_policy["belady"]["gate_mass"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(by_policy["llama_cpp"]["gate_mass"].get<double>(), 1.0);
  EXPECT_LT(by_policy["layer_reuse"]["gate_mass"].get<double>(), 1.0);
  EXPECT_TRUE(by_policy["layer_reuse"]["gap_closed"].is_number());
  EXPECT_DOUBLE_EQ(by_policy["belady"]["gap_closed"].get<double>(), 1.0);
}

// --as-one-run plays the runs back to back through one cache: the same
// hit rates as a trace that is one run of the same tokens, and more hits
// than cold-started runs when the second run repeats the first.
TEST_F(ClientTest, CliReplayAsOneRunCarriesTheCacheAcrossRuns) {
  testing::TempDir dir;
  std::string two_runs, one_run;
  for (int run = 0; run < 2; ++run) {
    for (int t = 0; t < 6; ++t) {
      for (int l = 0; l < 2; ++l) {
        const std::string experts = absl::StrFormat("[%d,%d]", (t + l) % 8, (t + l + 3) % 8);
        two_runs += absl::StrFormat(R"({"problem_id":%d,"layer":%d,"experts":%s,"token_idx":%d})",
                                    run, l, experts, t) +
                    "\n";
        one_run += absl::StrFormat(R"({"layer":%d,"experts":%s,"token_idx":%d})", l, experts,
                                   run * 6 + t) +
                   "\n";
      }
    }
  }
  ASSERT_TRUE(WriteFileAtomically(dir.File("two.jsonl"), two_runs).ok());
  ASSERT_TRUE(WriteFileAtomically(dir.File("one.jsonl"), one_run).ok());
  const auto rows = [&](const std::string& args) {
    const auto [out, code] = Cli("replay " + args + " --budgets 12 --json");
    EXPECT_EQ(code, 0) << out;
    std::map<std::string, double> by_policy;
    const nlohmann::json report = nlohmann::json::parse(out.substr(out.find('{')));
    for (const nlohmann::json& r : report["rows"]) {
      by_policy[r["policy"].get<std::string>()] = r["hit_rate"].get<double>();
    }
    return by_policy;
  };
  const auto carried = rows(dir.File("two.jsonl") + " --as-one-run");
  const auto cold = rows(dir.File("two.jsonl"));
  EXPECT_EQ(carried, rows(dir.File("one.jsonl")));
  ASSERT_TRUE(carried.count("lru"));
  EXPECT_GT(carried.at("lru"), cold.at("lru"));
}

// trace import on a file numpy writes, and a malformed one.
TEST_F(ClientTest, CliTraceImport) {
  testing::TempDir dir;
  const testing::CommandResult made = testing::RunCommand(
      absl::StrFormat("/usr/bin/python3 -c \"import numpy as np; "
                      "np.save('%s', np.array([[[0, 0], [1, 5]], [[0, 0], [5, 2]]], dtype='>i4')); "
                      "open('%s', 'wb').write(b'not npy')\" 2>&1",
                      dir.File("r.npy"), dir.File("bad.npy")));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const auto [out, code] =
      Cli("trace import vllm " + dir.File("r.npy") + " -o " + dir.File("t.jsonl"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("1 runs, 2 tokens, 2 steps; 1 MoE layers (input layers 1 to 1 of 2) "
                             "x 6 experts, top-2"));
  EXPECT_THAT(out, HasSubstr("note: input layer 0 holds no routing in any request (dense)"));
  const auto [stats, stats_code] = Cli("trace stats " + dir.File("t.jsonl") + " --json");
  ASSERT_EQ(stats_code, 0) << stats;
  EXPECT_THAT(stats, HasSubstr("\"tokens\": 2"));
  const auto [bad, bad_code] =
      Cli("trace import vllm " + dir.File("bad.npy") + " -o " + dir.File("u.jsonl"));
  EXPECT_EQ(bad_code, 1);
  EXPECT_THAT(bad, HasSubstr("bad.npy: not an .npy file"));
  EXPECT_EQ(Cli("trace import csv " + dir.File("r.npy") + " -o x").second, 1);
  EXPECT_EQ(Cli("trace import vllm " + dir.File("r.npy")).second, 2);  // no -o
  EXPECT_EQ(Cli("trace import vllm " + dir.File("r.npy") + " -o x --tokens some").second, 2);
}

TEST_F(ClientTest, CliPrefetch) {
  auto [queued, code] =
      Cli("prefetch --server " + address_ + " --model tiny --layer 1 --experts 6,7");
  EXPECT_EQ(code, 0) << queued;
  EXPECT_THAT(queued, HasSubstr("queued            6 7\n"));
  EXPECT_THAT(queued, HasSubstr("already resident  -\n"));
  auto [typo, typo_code] = Cli("prefetch --server " + address_ + " --model tiny --experts 1,x");
  EXPECT_EQ(typo_code, 2);
  EXPECT_THAT(typo, HasSubstr("'x' is not an expert number"));
  auto [range, range_code] = Cli("prefetch --server " + address_ + " --model tiny --experts 8");
  EXPECT_EQ(range_code, 1);
  EXPECT_THAT(range, HasSubstr("expert 8"));
}

// replay --server drives the server with a routing trace: one request per
// (token, layer) step, and the hits it reports are the server's own.
TEST_F(ClientTest, CliReplayThroughServer) {
  testing::TempDir dir;
  std::string jsonl;
  for (int token = 0; token < 5; ++token) {
    for (int layer = 0; layer < 2; ++layer) {
      jsonl += absl::StrFormat(
          R"({"dataset":"t","problem_id":0,"layer":%d,"experts":[%d,%d],"token_idx":%d})"
          "\n",
          layer, (token + layer) % 8, 7 - token % 3, token);
    }
  }
  ASSERT_TRUE(WriteFileAtomically(dir.File("t.jsonl"), jsonl).ok());
  uint64_t resident = 0;
  for (const char* via : {"", " --stream"}) {
    auto [out, code] =
        Cli("replay --server " + address_ + " --model tiny --json " + dir.File("t.jsonl") + via);
    ASSERT_EQ(code, 0) << out;
    const nlohmann::json report = nlohmann::json::parse(out);
    EXPECT_EQ(report["steps"], 10);
    EXPECT_EQ(report["accesses"], 20);
    EXPECT_EQ(report["changed_tokens"], 0);
    resident += report["resident"].get<uint64_t>();
  }
  auto stats = client_->Stats("tiny");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->routed_tokens(), 20u);
  uint64_t server_hits = 0;
  for (const v1::LayerStats& l : stats->layers()) server_hits += l.hits();
  EXPECT_EQ(server_hits, resident);

  ASSERT_TRUE(WriteFileAtomically(dir.File("deep.jsonl"),
                                  R"({"dataset":"t","problem_id":0,"layer":2,"experts":[1,2],)"
                                  R"("token_idx":0})"
                                  "\n")
                  .ok());
  auto [deep, deep_code] =
      Cli("replay --server " + address_ + " --model tiny " + dir.File("deep.jsonl"));
  EXPECT_EQ(deep_code, 1);
  EXPECT_THAT(deep, HasSubstr("the trace needs at least 3 layers"));
  auto [local, local_code] =
      Cli("replay --server " + address_ + " --global-slots 4 " + dir.File("t.jsonl"));
  EXPECT_EQ(local_code, 2);
  EXPECT_THAT(local, HasSubstr("--global-slots is for local replay"));
}

// Every call loadgen counts reached the server, and nothing else did.
TEST_F(ClientTest, CliLoadgenCountsWhatTheServerRouted) {
  uint64_t tokens = 0;
  for (const char* via : {"", " --stream"}) {
    auto [out, code] =
        Cli("loadgen --server " + address_ +
            " --model tiny --concurrency 3 --batch 4 --duration 0.2 --warmup 0 --json" + via);
    ASSERT_EQ(code, 0) << out;
    const nlohmann::json report = nlohmann::json::parse(out);
    EXPECT_GT(report["calls"].get<uint64_t>(), 0u);
    EXPECT_EQ(report["tokens"].get<uint64_t>(), 4 * report["calls"].get<uint64_t>());
    EXPECT_TRUE(report["errors"].empty()) << out;
    EXPECT_LE(report["p50_us"].get<double>(), report["p99_us"].get<double>());
    tokens += report["tokens"].get<uint64_t>();
  }
  EXPECT_EQ(client_->Stats("tiny")->routed_tokens(), tokens);
  auto [ghost, ghost_code] = Cli("loadgen --server " + address_ + " --model ghost --duration 0.1");
  EXPECT_EQ(ghost_code, 1);
  EXPECT_THAT(ghost, HasSubstr("no model named 'ghost'"));
}

// The sweep: one row per guard and bonus; a zero bonus changes no token and
// hits exactly as the unchanged routing does; the plots are written.
TEST(CliSweepTest, RowsPerGuardAndBonusAndPlots) {
  testing::TempDir dir;
  const testing::CommandResult r = testing::RunCommand(
      std::string(MOE_ROUTER_CLI_PATH) +
      " sweep --sequences 2 --tokens 24 --bonus 0,0.5 --guard 1:4 --guard 1:8:0.7 --json --svg " +
      dir.File("plot"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json report = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  ASSERT_EQ(report["rows"].size(), 4u);
  for (const nlohmann::json& row : report["rows"]) {
    if (row["bonus"].get<double>() == 0) {
      EXPECT_EQ(row["changed_fraction"].get<double>(), 0.0);
      EXPECT_EQ(row["hit_rate"].get<double>(), report["baseline_policy"].get<double>());
    }
    EXPECT_GE(row["gate_mass_min"].get<double>(), row["min_gate_mass"].get<double>());
  }
  for (const char* plot : {"plot-gate-mass.svg", "plot-changed.svg"}) {
    auto svg = ReadFile(dir.File(plot));
    ASSERT_TRUE(svg.ok()) << plot;
    EXPECT_THAT(*svg, HasSubstr("<svg"));
    EXPECT_THAT(*svg, HasSubstr("protected 1, max rank 8, mass &gt;= 0.7"));
  }
  const testing::CommandResult bad =
      testing::RunCommand(std::string(MOE_ROUTER_CLI_PATH) + " sweep --guard 1");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.output, HasSubstr("bad --guard '1'"));
}

// The command the store's errors name: it rebuilds a corrupt manifest, after
// which the checkpoint opens again.
TEST(CliIndexTest, RebuildsTheManifestTheStoreAsksFor) {
  testing::TempDir dir;
  testing::WriteExpertShard(dir.File("model.safetensors"), 2, 4, 8, 1, kMixtralExpertPattern);
  ASSERT_TRUE(WriteFileAtomically(dir.File(kManifestFileName), "{oops").ok());
  const auto broken = SafetensorsStore::Open({.directory = dir.path()});
  ASSERT_TRUE(absl::IsDataLoss(broken.status()));
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr("moe-router index"));

  const testing::CommandResult indexed =
      testing::RunCommand(std::string(MOE_ROUTER_CLI_PATH) + " index " + dir.path());
  EXPECT_EQ(indexed.exit_code, 0) << indexed.output;
  EXPECT_THAT(indexed.output, HasSubstr("indexed 24 tensors in " + dir.path()));
  EXPECT_TRUE(SafetensorsStore::Open({.directory = dir.path()}).ok());

  const testing::CommandResult missing =
      testing::RunCommand(std::string(MOE_ROUTER_CLI_PATH) + " index " + dir.File("absent"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr(dir.File("absent")));
  const testing::CommandResult usage =
      testing::RunCommand(std::string(MOE_ROUTER_CLI_PATH) + " index");
  EXPECT_EQ(usage.exit_code, 2);
}

}  // namespace
}  // namespace moe_router
