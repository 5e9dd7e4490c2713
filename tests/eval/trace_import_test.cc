// The importers on files numpy writes in each engine's exact layout
// (tests/eval/write_engine_dumps.py), against a hand-made expectation, and
// each malformed input with its message.
#include "eval/trace_import.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "eval/npy.h"
#include "eval/trace.h"
#include "tests/testing/rule_reference.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

class TraceImportTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    const testing::CommandResult r = testing::RunCommand(
        absl::StrCat("/usr/bin/python3 " MOE_ENGINE_DUMPS_SCRIPT " ", dir_->path(), " 2>&1"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string File(const std::string& name) { return dir_->File(name); }

  static absl::StatusOr<ImportedTrace> Vllm(const std::vector<std::string>& files,
                                            const ImportOptions& options = {}) {
    std::vector<RoutedRequest> requests;
    for (const std::string& f : files) {
      absl::StatusOr<std::vector<RoutedRequest>> r = ReadVllmRouting(File(f), options);
      if (!r.ok()) return r.status();
      requests.insert(requests.end(), r->begin(), r->end());
    }
    return BuildRoutedTrace(requests, options);
  }
  static absl::StatusOr<ImportedTrace> Sglang(const std::string& file,
                                              const ImportOptions& options) {
    absl::StatusOr<std::vector<RoutedRequest>> r = ReadSglangRouting(File(file), options);
    if (!r.ok()) return r.status();
    return BuildRoutedTrace(*r, options);
  }
  static absl::StatusOr<ImportedTrace> Hf(const std::string& file, const ImportOptions& options) {
    absl::StatusOr<std::vector<LogitsRequest>> r = ReadTransformersLogits(File(file), options);
    if (!r.ok()) return r.status();
    return BuildLogitsTrace(*r, options);
  }
  static std::string ErrorOf(const absl::StatusOr<ImportedTrace>& t) {
    return t.ok() ? "ok" : std::string(t.status().message());
  }

  static testing::TempDir* dir_;
};
testing::TempDir* TraceImportTest::dir_ = nullptr;

// The dumps' R0 and R1 without their dense layer 0, token then layer.
const std::vector<uint32_t> kR0 = {1, 5, 7, 2, 5, 1, 2, 3, 4, 6, 2, 7};
const std::vector<uint32_t> kR1 = {3, 4, 0, 1, 4, 3, 1, 6};

TEST_F(TraceImportTest, VllmArraysOfEveryDtypeAndByteOrderReadTheSame) {
  absl::StatusOr<ImportedTrace> t = Vllm({"req-0.npy", "req-0-be.npy", "req-0-u8.npy"});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dump_layers, 3u);
  EXPECT_THAT(t->source_layers, ElementsAre(1, 2));  // layer 0 is all zeros: dense
  const RoutingTrace& trace = t->trace;
  EXPECT_EQ(trace.num_layers, 2u);
  EXPECT_EQ(trace.num_experts, 8u);
  EXPECT_EQ(trace.top_k, 2u);
  ASSERT_EQ(trace.runs.size(), 3u);
  EXPECT_EQ(trace.runs[0].name, R"("req-0"/"req-0")");
  EXPECT_EQ(trace.runs[1].name, R"("req-0-be"/"req-0-be")");
  for (const RoutingTrace::Run& run : trace.runs) {
    EXPECT_EQ(run.tokens, 3u);
    EXPECT_THAT(run.experts, ElementsAreArray(kR0)) << run.name;
    ASSERT_EQ(run.steps.size(), 6u);
    EXPECT_EQ(run.steps[3].token, 1u);
    EXPECT_EQ(run.steps[3].layer, 1u);
  }
  EXPECT_THAT(t->notes, ::testing::Contains(HasSubstr("input layer 0 holds no routing")));
}

TEST_F(TraceImportTest, VllmArchivesStoredAndDeflatedHoldOneRequestPerArray) {
  for (const char* archive : {"requests.npz", "requests-z.npz"}) {
    absl::StatusOr<ImportedTrace> t = Vllm({archive});
    ASSERT_TRUE(t.ok()) << archive << ": " << t.status();
    const std::string stem = std::string(archive).substr(0, std::string(archive).size() - 4);
    ASSERT_EQ(t->trace.runs.size(), 2u);
    EXPECT_EQ(t->trace.runs[0].name, RunName(stem, "first"));
    EXPECT_EQ(t->trace.runs[1].name, RunName(stem, "second"));
    EXPECT_THAT(t->trace.runs[0].experts, ElementsAreArray(kR0));
    EXPECT_THAT(t->trace.runs[1].experts, ElementsAreArray(kR1));
    EXPECT_EQ(t->trace.runs[1].tokens, 2u);
  }
}

TEST_F(TraceImportTest, LayerMappingFollowsTheFlags) {
  ImportOptions keep_all;
  keep_all.drop_empty_layers = false;
  // Layer 0 kept: its rows of zeros are tokens the engine did not route.
  absl::StatusOr<ImportedTrace> t = Vllm({"req-0.npy"}, keep_all);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->source_layers, ElementsAre(0, 1, 2));
  EXPECT_EQ(t->unrouted_rows, 3u);
  EXPECT_EQ(t->trace.runs[0].steps.size(), 6u);
  EXPECT_EQ(t->trace.runs[0].steps[0].layer, 1u);
  ImportOptions from_two;
  from_two.first_moe_layer = 2;
  t = Vllm({"req-0.npy"}, from_two);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->source_layers, ElementsAre(2));
  EXPECT_THAT(t->trace.runs[0].experts, ElementsAre(7, 2, 2, 3, 2, 7));
  from_two.first_moe_layer = 3;
  EXPECT_THAT(ErrorOf(Vllm({"req-0.npy"}, from_two)),
              HasSubstr("--first-moe-layer 3 leaves none of the input's 3 layers"));
}

TEST_F(TraceImportTest, UnroutedTokensAreMissingSteps) {
  absl::StatusOr<ImportedTrace> t = Vllm({"unrouted.npy"});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->unrouted_rows, 1u);
  const RoutingTrace::Run& run = t->trace.runs[0];
  ASSERT_EQ(run.steps.size(), 5u);
  EXPECT_EQ(run.steps[0].token, 0u);
  EXPECT_EQ(run.steps[0].layer, 1u);  // token 0's layer 0 (input layer 1) is missing
  EXPECT_THAT(run.experts, ElementsAre(7, 2, 5, 1, 2, 3, 4, 6, 2, 7));
}

TEST_F(TraceImportTest, MalformedVllmInputsAreRefusedNamingWhatIsWrong) {
  const auto error = [&](const std::string& file, const ImportOptions& options = {}) {
    return ErrorOf(Vllm({file}, options));
  };
  EXPECT_THAT(error("truncated.npy"),
              HasSubstr("shape (3, 3, 2) of <i8 needs 144 bytes of data, the file has 139 "
                        "(truncated)"));
  EXPECT_THAT(error("truncated.npy"), HasSubstr("truncated.npy"));
  EXPECT_THAT(error("rank2.npy"), HasSubstr("shape (3, 6) is not (tokens, layers, top_k)"));
  EXPECT_THAT(error("floats.npy"), HasSubstr("dtype <f4 is not an integer type"));
  EXPECT_THAT(error("fortran.npy"), HasSubstr("Fortran-order arrays are not supported"));
  EXPECT_THAT(error("structured.npy"), HasSubstr("is not supported"));
  EXPECT_THAT(error("duplicate.npy"),
              HasSubstr(R"("duplicate"/"duplicate" token 1 layer 1 (input layer 2): expert 3 )"
                        "appears twice"));
  EXPECT_THAT(error("partial.npy"),
              HasSubstr("token 2 layer 0 (input layer 1): expert id -1 is out of range"));
  EXPECT_THAT(error("not-a-zip.npz"), HasSubstr("not a readable .npz (ZIP) archive"));
  EXPECT_THAT(error("missing.npy"), HasSubstr("missing.npy"));
  ImportOptions six_experts;
  six_experts.num_experts = 6;
  EXPECT_THAT(error("req-0.npy", six_experts),
              HasSubstr(R"("req-0"/"req-0" token 0 layer 1 (input layer 2): expert id 7 is out )"
                        "of range (the model has 6 experts)"));
  ImportOptions four_layers;
  four_layers.num_layers = 4;
  EXPECT_THAT(error("req-0.npy", four_layers),
              HasSubstr("req-0.npy: the input has 3 layers, --num-layers says 4"));
  ImportOptions top_three;
  top_three.top_k = 3;
  EXPECT_THAT(error("req-0.npy", top_three),
              HasSubstr("the input has 2 experts per token, --top-k says 3"));
}

TEST_F(TraceImportTest, SglangResponsesWithAndWithoutPromptBoundaries) {
  ImportOptions options;
  options.num_layers = 3;
  options.top_k = 2;
  absl::StatusOr<ImportedTrace> t = Sglang("sglang.jsonl", options);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->trace.runs.size(), 3u);
  EXPECT_EQ(t->trace.runs[0].name, RunName("sglang", "chatcmpl-7"));
  EXPECT_EQ(t->trace.runs[1].name, RunName("sglang", "cmpl-8"));
  EXPECT_EQ(t->trace.runs[2].name, RunName("sglang", "gen-9"));
  EXPECT_THAT(t->trace.runs[0].experts, ElementsAreArray(kR0));
  EXPECT_THAT(t->trace.runs[1].experts, ElementsAreArray(kR1));
  EXPECT_THAT(t->trace.runs[2].experts, ElementsAreArray(kR1));
  // 2 prompt + 2 completion tokens route 3 rows; 1 + 1 route 2: both end
  // their prompts where usage / meta_info says. No usage: unknown.
  EXPECT_EQ(t->origins[0].prompt_tokens, 2);
  EXPECT_EQ(t->origins[1].prompt_tokens, -1);
  EXPECT_EQ(t->origins[2].prompt_tokens, 1);
  EXPECT_THAT(t->notes, ::testing::Contains(HasSubstr("1 of 3 requests do not say where their "
                                                      "prompt ends")));

  options.tokens = ImportOptions::Tokens::kGenerated;
  EXPECT_THAT(ErrorOf(Sglang("sglang.jsonl", options)),
              HasSubstr(R"("sglang"/"cmpl-8": the input does not say where its prompt ends)"));
}

TEST_F(TraceImportTest, SglangTokenSelectionKeepsThePromptOrTheGeneratedTokens) {
  ImportOptions options;
  options.num_layers = 3;
  options.top_k = 2;
  absl::StatusOr<std::vector<RoutedRequest>> r = ReadSglangRouting(File("sglang.jsonl"), options);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::vector<RoutedRequest> chat = {(*r)[0]};
  options.tokens = ImportOptions::Tokens::kPrompt;
  absl::StatusOr<ImportedTrace> t = BuildRoutedTrace(chat, options);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->trace.runs[0].experts, ElementsAre(1, 5, 7, 2, 5, 1, 2, 3));
  options.tokens = ImportOptions::Tokens::kGenerated;
  t = BuildRoutedTrace(chat, options);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->trace.runs[0].experts, ElementsAre(4, 6, 2, 7));
  EXPECT_EQ(t->trace.runs[0].steps[0].token, 0u);  // renumbered from the first generated token
}

TEST_F(TraceImportTest, SglangShapesComeFromTheFlagsOrTheTokenCounts) {
  ImportOptions top_k_only;
  top_k_only.top_k = 2;
  // The chat response's 18 ids are 3 rows (2 + 2 - 1) of 3 layers; the
  // completion has no token counts to shape it.
  absl::StatusOr<std::vector<RoutedRequest>> chat = ParseSglangLine(
      testing::RunCommand("sed -n 1p " + File("sglang.jsonl")).output, "chat", "s", top_k_only);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ((*chat)[0].layers, 3u);
  EXPECT_EQ((*chat)[0].tokens, 3u);
  EXPECT_THAT(ErrorOf(Sglang("sglang.jsonl", top_k_only)),
              HasSubstr("sglang.jsonl:2 (request 'cmpl-8'): cannot tell the layer count from the "
                        "response's token counts: give --num-layers"));
  EXPECT_THAT(ErrorOf(Sglang("sglang.jsonl", {})), HasSubstr("give --top-k"));
  ImportOptions wrong;
  wrong.num_layers = 4;
  wrong.top_k = 2;
  EXPECT_THAT(ErrorOf(Sglang("sglang.jsonl", wrong)),
              HasSubstr("sglang.jsonl:1 (request 'chatcmpl-7'): routed_experts holds 18 ids, not "
                        "whole tokens of 4 layers x top-2 (--num-layers, --top-k)"));
}

TEST_F(TraceImportTest, MalformedSglangResponsesAreRefusedNamingTheLineAndRequest) {
  ImportOptions options;
  options.num_layers = 3;
  options.top_k = 2;
  EXPECT_THAT(ErrorOf(Sglang("sglang-bad-base64.jsonl", options)),
              HasSubstr("sglang-bad-base64.jsonl:1 (request 'chatcmpl-7'): routed_experts is not "
                        "valid base64"));
  EXPECT_THAT(ErrorOf(Sglang("sglang-no-routing.jsonl", options)),
              HasSubstr("request 'chatcmpl-7' has no routed_experts"));
  const auto line_error = [&](const std::string& line) {
    absl::StatusOr<std::vector<RoutedRequest>> r = ParseSglangLine(line, "f:4", "f", options);
    return r.ok() ? "ok" : std::string(r.status().message());
  };
  EXPECT_THAT(line_error("{\"choices\": "), HasSubstr("f:4: not JSON"));
  EXPECT_THAT(line_error("{\"object\": \"error\"}"), HasSubstr("neither 'choices'"));
  EXPECT_THAT(line_error(R"({"meta_info": {"id": "x", "routed_experts": "AAAAAA=="}})"),
              HasSubstr("routed_experts holds 1 ids, not whole tokens"));
  EXPECT_THAT(line_error(R"({"meta_info": {"id": "x", "routed_experts": "AAAAAAA="}})"),
              HasSubstr("routed_experts decodes to 5 bytes, not whole int32 ids"));
  EXPECT_THAT(
      line_error(R"({"meta_info": {"id": "x", "routed_experts": [[[1, 2], [3], [4, 5]]]}})"),
      HasSubstr("token 0 layer 1's experts are not 2 ids"));
  EXPECT_THAT(line_error(R"({"meta_info": {"id": "x", "routed_experts": 7}})"),
              HasSubstr("neither a base64 string nor a list"));
}

// Some servers return the ids as nested lists, which carry their shape.
TEST_F(TraceImportTest, SglangNestedListsCarryTheirShape) {
  absl::StatusOr<std::vector<RoutedRequest>> r =
      ParseSglangLine(R"({"meta_info": {"id": "n", "routed_experts": [[[0, 0], [1, 5], [7, 2]]]}})",
                      "f:1", "f", {});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].tokens, 1u);
  EXPECT_EQ((*r)[0].layers, 3u);
  EXPECT_EQ((*r)[0].top_k, 2u);
  EXPECT_THAT((*r)[0].ids, ElementsAre(0, 0, 1, 5, 7, 2));
}

// Transformers' router logits into a logits trace: the same steps from a
// stacked float32 array, a float16 list of layers and a float64 big-endian
// archive member; the experts are their top-2.
TEST_F(TraceImportTest, TransformersLogitsBecomeALogitsTrace) {
  ImportOptions options;
  options.top_k = 2;
  const std::vector<float> expected_logits = {0.5f, 2.0f,  -1.0f, 1.5f, -0.5f, -1.5f, 2.5f, 1.0f,
                                              3.0f, -2.0f, 0.25f, 0.0f, 1.0f,  1.25f, 1.5f, 1.75f};
  for (const char* file : {"logits.npy", "logits-layers.npz"}) {
    absl::StatusOr<ImportedTrace> t = Hf(file, options);
    ASSERT_TRUE(t.ok()) << file << ": " << t.status();
    const RoutingTrace& trace = t->trace;
    EXPECT_TRUE(trace.has_logits());
    EXPECT_EQ(trace.num_layers, 2u);
    EXPECT_EQ(trace.num_experts, 4u);
    EXPECT_THAT(t->source_layers, ElementsAre(1, 2));
    ASSERT_EQ(trace.runs.size(), 1u);
    EXPECT_EQ(trace.runs[0].tokens, 2u);
    EXPECT_THAT(trace.runs[0].logits, ElementsAreArray(expected_logits)) << file;
    EXPECT_THAT(trace.runs[0].experts, ElementsAre(1, 3, 2, 3, 0, 2, 3, 2)) << file;
  }
  absl::StatusOr<ImportedTrace> t = Hf("logits-requests.npz", options);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->trace.runs.size(), 2u);
  EXPECT_EQ(t->trace.runs[0].name, RunName("logits-requests", "a"));
  EXPECT_THAT(t->trace.runs[0].logits, ElementsAreArray(expected_logits));
  EXPECT_EQ(t->trace.runs[1].tokens, 1u);
  EXPECT_THAT(t->trace.runs[1].experts, ElementsAre(1, 3, 2, 3));

  EXPECT_THAT(ErrorOf(Hf("logits.npy", {})), HasSubstr("give --top-k from 1 to 4"));
  EXPECT_THAT(ErrorOf(Hf("req-0.npy", options)), HasSubstr("dtype <i8 is not a float type"));
  EXPECT_THAT(ErrorOf(Hf("rank2.npy", options)),
              HasSubstr("shape (3, 6) is not (layers, tokens, num_experts)"));
  options.num_experts = 8;
  EXPECT_THAT(ErrorOf(Hf("logits.npy", options)),
              HasSubstr("the input has 4 experts, --num-experts says 8"));
  options.num_experts = 0;
  options.tokens = ImportOptions::Tokens::kGenerated;
  EXPECT_THAT(ErrorOf(Hf("logits.npy", options)),
              HasSubstr("router logits do not say where a prompt ends"));
}

// A model routed by another rule: its steps' experts are that rule's, with
// the kept layers' rows of the dump's biases.
TEST_F(TraceImportTest, TransformersLogitsAreRoutedByTheModelsRule) {
  ImportOptions options;
  options.top_k = 2;
  options.rule = *RoutingRulePreset("minimax_m2");
  // Per dump layer (the dense layer 0 included): a bias that makes
  // expert 2 win at layer 1.
  options.choice_bias = {0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0};
  absl::StatusOr<ImportedTrace> t = Hf("logits.npy", options);
  ASSERT_TRUE(t.ok()) << t.status();
  const RoutingTrace& trace = t->trace;
  EXPECT_EQ(trace.rule, options.rule);
  EXPECT_THAT(trace.choice_bias, ElementsAre(0, 0, 5, 0, 0, 0, 0, 0));
  for (size_t s = 0; s < trace.runs[0].steps.size(); ++s) {
    const auto want = testing::RouteByRule(trace.rule, 2, trace.StepLogits(trace.runs[0], s),
                                           trace.LayerChoiceBias(trace.runs[0].steps[s].layer));
    EXPECT_THAT(trace.StepExperts(trace.runs[0], s), ElementsAreArray(want.experts)) << s;
  }
  EXPECT_EQ(trace.StepExperts(trace.runs[0], 0)[0], 2u);
  options.choice_bias.pop_back();
  EXPECT_THAT(ErrorOf(Hf("logits.npy", options)),
              HasSubstr("the dump's 3 layers: routing.choice_bias has 11 values"));
}

// What the importer writes, ReadTrace reads back to the same trace; the
// phases follow the prompt boundary.
TEST_F(TraceImportTest, WrittenTracesReadBackTheSame) {
  ImportOptions options;
  options.num_layers = 3;
  options.top_k = 2;
  options.num_experts = 16;  // more than the ids use: kept by the file
  absl::StatusOr<ImportedTrace> t = Sglang("sglang.jsonl", options);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string out = File("sglang-out.jsonl");
  ASSERT_TRUE(WriteRoutingJsonl(out, *t).ok());
  absl::StatusOr<RoutingTrace> back = ReadTrace(out);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->num_layers, t->trace.num_layers);
  EXPECT_EQ(back->num_experts, 16u);
  EXPECT_EQ(back->top_k, 2u);
  ASSERT_EQ(back->runs.size(), t->trace.runs.size());
  for (size_t r = 0; r < back->runs.size(); ++r) {
    EXPECT_EQ(back->runs[r].name, t->trace.runs[r].name);
    EXPECT_EQ(back->runs[r].tokens, t->trace.runs[r].tokens);
    EXPECT_EQ(back->runs[r].experts, t->trace.runs[r].experts);
    ASSERT_EQ(back->runs[r].steps.size(), t->trace.runs[r].steps.size());
  }
  const std::string lines = testing::RunCommand("cat " + out).output;
  EXPECT_THAT(lines, HasSubstr(R"({"dataset":"sglang","problem_id":"chatcmpl-7","num_experts":16,)"
                               R"("layer":1,"token_idx":1,"experts":[2,3],"phase":"prompt"})"));
  EXPECT_THAT(lines, HasSubstr(R"("layer":0,"token_idx":2,"experts":[4,6],"phase":"generated"})"));
  EXPECT_THAT(lines, HasSubstr(R"("problem_id":"cmpl-8","num_experts":16,"layer":0,)"
                               R"("token_idx":0,"experts":[3,4]})"));
}

// A file name need not be UTF-8 (JSON strings must be): its invalid bytes
// are replaced, and the written trace reads back under the same name.
TEST_F(TraceImportTest, ANameThatIsNotUtf8IsWrittenAndReadBackTheSame) {
  const std::string name = "req-\xff";
  ASSERT_EQ(
      testing::RunCommand("cp '" + File("req-0.npy") + "' '" + File(name + ".npy") + "'").exit_code,
      0);
  absl::StatusOr<ImportedTrace> t = Vllm({name + ".npy"});
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(WriteRoutingJsonl(File("utf8.jsonl"), *t).ok());
  absl::StatusOr<RoutingTrace> back = ReadTrace(File("utf8.jsonl"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->runs[0].name, t->trace.runs[0].name);
  EXPECT_EQ(back->runs[0].name, "\"req-\xef\xbf\xbd\"/\"req-\xef\xbf\xbd\"");  // U+FFFD
}

}  // namespace
}  // namespace moe_router
