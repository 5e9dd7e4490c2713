#include "eval/trace.h"

#include "absl/strings/str_cat.h"
#include "core/base/file_io.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::StatusOr<RoutingTrace> ReadText(const testing::TempDir& dir, const std::string& text) {
  const std::string path = dir.File("t.jsonl");
  EXPECT_TRUE(WriteFileAtomically(path, text).ok());
  return ReadTrace(path);
}

TEST(TraceTest, ReadsSparseJsonlInTokenThenLayerOrder) {
  testing::TempDir dir;
  // Lines out of order, token_pos naming, an extra field, a missing step.
  auto trace =
      ReadText(dir,
               R"({"dataset":"d","problem_id":0,"layer":1,"experts":[3,1],"token_pos":0,"x":1}
{"dataset":"d","problem_id":0,"layer":0,"experts":[2,0],"token_pos":0}
{"dataset":"d","problem_id":0,"layer":0,"experts":[1,2],"token_pos":1}

{"dataset":"d","problem_id":1,"layer":1,"experts":[0,3],"token_idx":0}
)");
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->num_layers, 2u);
  EXPECT_EQ(trace->num_experts, 4u);
  EXPECT_EQ(trace->top_k, 2u);
  ASSERT_EQ(trace->runs.size(), 2u);
  const RoutingTrace::Run& run = trace->runs[0];
  ASSERT_EQ(run.steps.size(), 3u);
  EXPECT_EQ(run.tokens, 2u);
  EXPECT_EQ(run.steps[1].layer, 1u);
  EXPECT_THAT(trace->StepExperts(run, 0), ElementsAre(2u, 0u));
  EXPECT_THAT(trace->StepExperts(run, 1), ElementsAre(3u, 1u));
  EXPECT_EQ(trace->Accesses(), 8u);
  EXPECT_FALSE(trace->has_logits());
}

TEST(TraceTest, MalformedLinesNameTheLine) {
  testing::TempDir dir;
  const auto error = [&](const std::string& text) {
    auto t = ReadText(dir, text);
    EXPECT_FALSE(t.ok());
    return std::string(t.status().message());
  };
  EXPECT_THAT(error("{\"layer\":0,\"experts\":[1],\"token_idx\":0}\nnot json\n"),
              HasSubstr("t.jsonl:2: not a JSON object"));
  EXPECT_THAT(error("{\"experts\":[1],\"token_idx\":0}\n"), HasSubstr(":1: missing 'layer'"));
  EXPECT_THAT(error("{\"layer\":0,\"experts\":[1]}\n"), HasSubstr("'token_idx' / 'token_pos'"));
  EXPECT_THAT(error("{\"layer\":0,\"experts\":[1,2],\"token_idx\":0}\n"
                    "{\"layer\":1,\"experts\":[1],\"token_idx\":0}\n"),
              HasSubstr(":2: 1 experts where earlier lines have 2"));
  EXPECT_THAT(error("{\"layer\":0,\"experts\":[1],\"token_idx\":0}\n"
                    "{\"layer\":0,\"experts\":[2],\"token_idx\":0}\n"),
              HasSubstr(":2: token 0 layer 0"));
  EXPECT_THAT(error(""), HasSubstr("no trace lines"));
  EXPECT_FALSE(ReadTrace(dir.File("missing.jsonl")).ok());
}

// Every id is range-checked before it is narrowed: nlohmann's get<uint32_t>
// would take 2^32 as 0, and a float as whatever the conversion gives.
TEST(TraceTest, IdsOutOfRangeAreRefusedNotTruncated) {
  testing::TempDir dir;
  const auto error = [&](const std::string& line) {
    auto t = ReadText(dir, line + "\n");
    EXPECT_FALSE(t.ok()) << line;
    return std::string(t.status().message());
  };
  EXPECT_THAT(
      error(R"({"layer":0,"experts":[4294967296],"token_idx":0})"),
      HasSubstr(":1: 'experts'[0] must be an integer from 0 to 4294967295, got 4294967296"));
  EXPECT_THAT(error(R"({"layer":4294967296,"experts":[1],"token_idx":0})"),
              HasSubstr("'layer' must be an integer from 0 to 4294967295"));
  EXPECT_THAT(error(R"({"layer":-1,"experts":[1],"token_idx":0})"),
              HasSubstr("'layer' must be an integer"));
  EXPECT_THAT(error(R"({"layer":0,"experts":[1],"token_idx":1.5})"),
              HasSubstr("the token index must be an integer from 0 to 4294967295, got 1.5"));
  EXPECT_THAT(error(R"({"layer":0,"experts":[true],"token_idx":0})"),
              HasSubstr("'experts'[0] must be an integer"));
  // Beyond a model's shape (what a reader sizes by): refused by name.
  EXPECT_THAT(error(R"({"layer":1024,"experts":[1],"token_idx":0})"),
              HasSubstr(":1: 'layer' 1024 is beyond the 1024 layers a model may have"));
  EXPECT_THAT(error(R"({"layer":0,"experts":[4096],"token_idx":0})"),
              HasSubstr(":1: expert 4096 is beyond the 4096 experts a model may have"));
  EXPECT_THAT(error(R"({"layer":0,"experts":[1],"token_idx":0,"num_experts":4097})"),
              HasSubstr(":1: 'num_experts' 4097 is beyond the 4096 experts a model may have"));
  EXPECT_THAT(error(R"({"layer":0,"experts":[9],"token_idx":0,"num_experts":8})"),
              HasSubstr(":1: expert 9 is not below 'num_experts' 8"));
  EXPECT_THAT(error(R"({"layer":0,"experts":[1],"token_idx":0,"num_experts":-8})"),
              HasSubstr("'num_experts' must be an integer"));
}

// An optional num_experts gives the model's expert count when the trace
// does not use them all.
TEST(TraceTest, NumExpertsOfAJsonlLineCountsExpertsNeverUsed) {
  testing::TempDir dir;
  auto t = ReadText(dir,
                    "{\"layer\":0,\"experts\":[1],\"token_idx\":0,\"num_experts\":64}\n"
                    "{\"layer\":0,\"experts\":[3],\"token_idx\":1}\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->num_experts, 64u);
  t = ReadText(dir, "{\"layer\":0,\"experts\":[3],\"token_idx\":0}\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->num_experts, 4u);
}

// What a longer fuzzing run found: a header number beyond every integer
// type reached a float-to-uint32 conversion inside nlohmann (undefined
// behaviour; UBSan aborted). Now it is a clear error.
TEST(TraceTest, AHugeLogitsHeaderNumberIsAnError) {
  testing::TempDir dir;
  const auto trace = ReadText(
      dir, R"({"format": "moe-router-logits/1", "num_layers": 99999999999999999999999999999992, )"
           R"("num_experts": 8, "top_k": 2, "runs": []})"
           "\n");
  ASSERT_FALSE(trace.ok());
  EXPECT_THAT(std::string(trace.status().message()),
              HasSubstr("header 'num_layers' must be an integer from 0 to 4294967295, got 1e+32"));
}

TEST(TraceTest, LogitsTraceRoundTripsAndRecomputesTopK) {
  WorkloadShape shape;
  shape.num_layers = 3;
  shape.num_experts = 6;
  shape.top_k = 2;
  const RoutingTrace trace = GenerateTrace(shape, 2, 5, 7);
  testing::TempDir dir;
  ASSERT_TRUE(WriteLogitsTrace(dir.File("g.logits"), trace).ok());
  auto back = ReadTrace(dir.File("g.logits"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->has_logits());
  ASSERT_EQ(back->runs.size(), 2u);
  EXPECT_EQ(back->runs[1].logits, trace.runs[1].logits);
  EXPECT_EQ(back->runs[1].experts, trace.runs[1].experts);
  EXPECT_EQ(back->Steps(), 30u);
  // Each step's experts are the two largest logits.
  const auto logits = back->StepLogits(back->runs[0], 4);
  const auto experts = back->StepExperts(back->runs[0], 4);
  for (uint32_t e = 0; e < 6; ++e) {
    if (e != experts[0] && e != experts[1]) {
      EXPECT_LE(logits[e], logits[experts[1]]);
    }
  }
  EXPECT_GE(logits[experts[0]], logits[experts[1]]);
  // A truncated file is an error naming the run.
  auto text = ReadFile(dir.File("g.logits"));
  ASSERT_TRUE(WriteFileAtomically(dir.File("cut.logits"), text->substr(0, text->size() - 5)).ok());
  EXPECT_THAT(std::string(ReadTrace(dir.File("cut.logits")).status().message()),
              HasSubstr("run seq1 are truncated"));
}

// A run's prompt: the tokens whose lines say "phase": "prompt" (as trace
// import writes them), which must be its first; a logits trace's header
// carries it.
TEST(TraceTest, MarkedPromptTokensAreTheRunsFirstAndSurviveALogitsTrace) {
  testing::TempDir dir;
  auto trace =
      ReadText(dir, R"({"problem_id":0,"layer":0,"experts":[1],"token_idx":0,"phase":"prompt"}
{"problem_id":0,"layer":1,"experts":[2],"token_idx":0,"phase":"prompt"}
{"problem_id":0,"layer":0,"experts":[1],"token_idx":1,"phase":"prompt"}
{"problem_id":0,"layer":0,"experts":[3],"token_idx":2,"phase":"generated"}
{"problem_id":1,"layer":0,"experts":[0],"token_idx":0}
)");
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->runs.size(), 2u);
  EXPECT_EQ(trace->runs[0].prompt_tokens, 2u);
  EXPECT_EQ(trace->runs[1].prompt_tokens, 0u);
  auto gap = ReadText(dir, R"({"problem_id":0,"layer":0,"experts":[1],"token_idx":0}
{"problem_id":0,"layer":0,"experts":[1],"token_idx":1,"phase":"prompt"}
)");
  EXPECT_THAT(std::string(gap.status().message()),
              HasSubstr("run /0 marks tokens up to 1 as its prompt but not all of those before"));
  auto other = ReadText(dir, R"({"layer":0,"experts":[1],"token_idx":0,"phase":"decode"}
)");
  EXPECT_THAT(std::string(other.status().message()),
              HasSubstr(":1: 'phase' is not \"prompt\" or \"generated\""));

  RoutingTrace generated = GenerateTrace(GetWorkloadPreset("mixtral")->shape, 2, 5, 7);
  generated.runs[1].prompt_tokens = 3;
  ASSERT_TRUE(WriteLogitsTrace(dir.File("p.logits"), generated).ok());
  auto back = ReadTrace(dir.File("p.logits"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->runs[0].prompt_tokens, 0u);
  EXPECT_EQ(back->runs[1].prompt_tokens, 3u);
  auto text = ReadFile(dir.File("p.logits"));
  const size_t newline = text->find('\n');
  nlohmann::json header = nlohmann::json::parse(text->substr(0, newline));
  header["runs"][1]["prompt_tokens"] = 6;
  ASSERT_TRUE(
      WriteFileAtomically(dir.File("q.logits"), header.dump() + text->substr(newline)).ok());
  EXPECT_THAT(std::string(ReadTrace(dir.File("q.logits")).status().message()),
              HasSubstr("run seq1 has 6 prompt tokens of 5"));
}

// A trace routed by a rule carries it, biases included, in its header; read
// back, its experts are the rule's again. A header whose routing does not
// fit is refused naming the field.
TEST(TraceTest, LogitsTraceCarriesItsRoutingRule) {
  WorkloadShape shape = GetWorkloadPreset("deepseek-v3")->shape;
  shape.num_layers = 3;
  shape.num_experts = 32;
  const RoutingTrace trace = GenerateTrace(shape, 2, 20, 4);
  ASSERT_EQ(trace.choice_bias.size(), 96u);
  testing::TempDir dir;
  ASSERT_TRUE(WriteLogitsTrace(dir.File("r.logits"), trace).ok());
  auto back = ReadTrace(dir.File("r.logits"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->rule, trace.rule);
  EXPECT_EQ(back->choice_bias, trace.choice_bias);
  EXPECT_EQ(back->runs[1].experts, trace.runs[1].experts);
  // Routed as softmax, the same logits choose differently.
  RoutingTrace softmax = *back;
  softmax.rule = RoutingRule{};
  softmax.choice_bias.clear();
  ASSERT_TRUE(FillTopKFromLogits(softmax).ok());
  EXPECT_NE(softmax.runs[1].experts, trace.runs[1].experts);
  // A bias count that does not fit, or a rule the shape cannot take.
  auto text = ReadFile(dir.File("r.logits"));
  ASSERT_TRUE(text.ok());
  const size_t newline = text->find('\n');
  nlohmann::json header = nlohmann::json::parse(text->substr(0, newline));
  nlohmann::json bad = header;
  bad["routing"]["bias"].erase(0);
  ASSERT_TRUE(WriteFileAtomically(dir.File("b.logits"), bad.dump() + text->substr(newline)).ok());
  EXPECT_THAT(std::string(ReadTrace(dir.File("b.logits")).status().message()),
              HasSubstr("header 'routing': routing.choice_bias has 95 values"));
  bad = header;
  bad["routing"]["numGroups"] = 5;
  ASSERT_TRUE(WriteFileAtomically(dir.File("g.logits"), bad.dump() + text->substr(newline)).ok());
  EXPECT_THAT(std::string(ReadTrace(dir.File("g.logits")).status().message()),
              HasSubstr("routing.num_groups (5) must divide num_experts (32)"));
  bad = header;
  bad["routing"]["score"] = "relu";
  ASSERT_TRUE(WriteFileAtomically(dir.File("s.logits"), bad.dump() + text->substr(newline)).ok());
  EXPECT_THAT(std::string(ReadTrace(dir.File("s.logits")).status().message()),
              HasSubstr("routing.score 'relu' is not one of"));
}

// A header alone cannot make the reader allocate: what it promises must be
// in the file.
TEST(TraceTest, LogitsTraceHeaderPromisingMoreThanTheFileIsRefused) {
  testing::TempDir dir;
  const std::string header =
      R"({"format":"moe-router-logits/1","num_layers":1024,"num_experts":4096,)"
      R"("top_k":1,"runs":[{"name":"huge","tokens":4000000000}]})";
  for (const std::string& records : {std::string(), std::string(64, '\0')}) {
    const auto trace = ReadText(dir, header + "\n" + records);
    ASSERT_FALSE(trace.ok());
    EXPECT_THAT(std::string(trace.status().message()),
                HasSubstr("logits of run huge are truncated: the header promises more than the "
                          "file's " +
                          std::to_string(records.size()) + " bytes of records hold"));
  }
}

// Found by trace_reader_fuzz: a header of many layers and no records made
// the reader build a router per layer (out of memory). Only layers some
// step visits get one; a shape beyond any model's is refused by name.
TEST(TraceTest, LogitsTraceHeaderOfTheLargestShapeWithoutRecordsReadsEmpty) {
  testing::TempDir dir;
  const auto trace =
      ReadText(dir, R"({"format":"moe-router-logits/1","num_layers":1024,"num_experts":4096,)"
                    R"("top_k":8,"runs":[{"name":"empty","tokens":0}]})"
                    "\n");
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->num_layers, 1024u);
  ASSERT_EQ(trace->runs.size(), 1u);
  EXPECT_EQ(trace->Steps(), 0u);
  for (const char* shape :
       {R"("num_layers":1025,"num_experts":8)", R"("num_layers":2,"num_experts":4097)"}) {
    const auto beyond = ReadText(dir, absl::StrCat(R"({"format":"moe-router-logits/1",)", shape,
                                                   R"(,"top_k":2,"runs":[]})", "\n"));
    ASSERT_FALSE(beyond.ok()) << shape;
    EXPECT_THAT(std::string(beyond.status().message()),
                HasSubstr("is beyond what a model may have (1024 x 4096)"));
  }
}

// Stats pair a step with the previous token's at its layer only: tokens
// far apart (a sparse run) are not paired, and cost nothing by their gap.
TEST(TraceTest, StatsOfASparseRunPairOnlyConsecutiveTokens) {
  testing::TempDir dir;
  auto trace = ReadText(dir,
                        "{\"layer\":0,\"experts\":[0,1],\"token_idx\":0}\n"
                        "{\"layer\":0,\"experts\":[0,2],\"token_idx\":1}\n"
                        "{\"layer\":0,\"experts\":[0,1],\"token_idx\":4000000000}\n");
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->runs[0].tokens, 4000000001u);
  const TraceStats s = ComputeTraceStats(*trace);
  EXPECT_DOUBLE_EQ(s.overlap_mean, 1.0);
  EXPECT_DOUBLE_EQ(s.reuse_mean, 0.5);  // token 1 reuses 0 of {0, 2}; 4e9 is not paired
}

// Found by trace_reader_fuzz: a first line whose "format" is not a string
// threw nlohmann's type_error out of ReadTrace.
TEST(TraceTest, FormatOfAnotherTypeIsAnErrorNotAnException) {
  testing::TempDir dir;
  const auto trace = ReadText(dir, "{\"format\": [0, 3]}\n");
  EXPECT_FALSE(trace.ok());
}

TEST(TraceTest, StatsOfAKnownTrace) {
  testing::TempDir dir;
  // One layer, three tokens: {0,1} -> {1,2} -> {3,2}.
  auto trace = ReadText(dir,
                        "{\"layer\":0,\"experts\":[0,1],\"token_idx\":0}\n"
                        "{\"layer\":0,\"experts\":[1,2],\"token_idx\":1}\n"
                        "{\"layer\":0,\"experts\":[3,2],\"token_idx\":2}\n");
  ASSERT_TRUE(trace.ok());
  const TraceStats s = ComputeTraceStats(*trace);
  EXPECT_DOUBLE_EQ(s.overlap_mean, 1.0);
  EXPECT_DOUBLE_EQ(s.first_choice_recurrence, 0.0);
  // Uses: 0:1, 1:2, 2:2, 3:1 of 6; busiest share 2/6 over mean 1/4.
  EXPECT_DOUBLE_EQ(s.skew_mean, (2.0 / 6) / (1.0 / 4));
  // Token 1 reuses 1 of its 2 experts, token 2 reuses 1 of 2.
  EXPECT_DOUBLE_EQ(s.reuse_mean, 0.5);
  EXPECT_DOUBLE_EQ(s.busiest_share_mean, 2.0 / 6);
  // A tenth of 4 experts is one: the busiest.
  EXPECT_DOUBLE_EQ(s.top_tenth_share_mean, 2.0 / 6);
  ASSERT_EQ(s.reuse_by_layer.size(), 1u);
}

}  // namespace
}  // namespace moe_router
