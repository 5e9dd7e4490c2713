// ModelSpec (the API and config file) to ModelConfig (the core), field by
// field: a setting the conversion forgets fails its own row.
#include "proto/proto_to_core.h"

#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <tuple>
#include <variant>

#include "absl/strings/str_format.h"
#include "core/store/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/model_registry.h"
#include "tests/testing/test_specs.h"

namespace moe_router {
namespace {

using Value = std::variant<double, std::string>;

struct FieldCase {
  const char* field;
  std::function<void(v1::ModelSpec*)> set;
  std::function<Value(const ModelConfig&)> get;
  Value want;
};

const std::vector<FieldCase>& FieldCases() {
  static const auto* cases = new std::vector<FieldCase>{
      {"num_layers", [](v1::ModelSpec* s) { s->set_num_layers(7); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.num_layers); }, 7.0},
      {"num_experts", [](v1::ModelSpec* s) { s->set_num_experts(16); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.router.num_experts); },
       16.0},
      {"top_k", [](v1::ModelSpec* s) { s->set_top_k(3); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.router.top_k); }, 3.0},
      {"budget_bytes", [](v1::ModelSpec* s) { s->set_budget_bytes(123456); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.budget_bytes); }, 123456.0},
      {"eviction_policy", [](v1::ModelSpec* s) { s->set_eviction_policy("lfu"); },
       [](const ModelConfig& c) -> Value { return c.eviction_policy; }, std::string("lfu")},
      {"prefetch_next_layer", [](v1::ModelSpec* s) { s->set_prefetch_next_layer(5); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.prefetch_next_layer); },
       5.0},
      {"router.cache_bonus", [](v1::ModelSpec* s) { s->mutable_router()->set_cache_bonus(0.25); },
       [](const ModelConfig& c) -> Value { return c.router.cache_bonus; }, 0.25},
      {"router.absolute_bonus",
       [](v1::ModelSpec* s) { s->mutable_router()->set_absolute_bonus(true); },
       [](const ModelConfig& c) -> Value {
         return c.router.bonus_mode == BonusMode::kAbsolute ? 1.0 : 0.0;
       },
       1.0},
      {"router.disable_memory_aware",
       [](v1::ModelSpec* s) { s->mutable_router()->set_disable_memory_aware(true); },
       [](const ModelConfig& c) -> Value { return c.router.memory_aware ? 1.0 : 0.0; }, 0.0},
      {"router.prefetch_threshold",
       [](v1::ModelSpec* s) { s->mutable_router()->set_prefetch_threshold(0.125); },
       [](const ModelConfig& c) -> Value { return c.router.prefetch_threshold; }, 0.125},
      {"router.protected_top", [](v1::ModelSpec* s) { s->mutable_router()->set_protected_top(2); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.router.protected_top); },
       2.0},
      {"router.max_rank", [](v1::ModelSpec* s) { s->mutable_router()->set_max_rank(6); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.router.max_rank); }, 6.0},
      {"router.min_gate_mass",
       [](v1::ModelSpec* s) { s->mutable_router()->set_min_gate_mass(0.875); },
       [](const ModelConfig& c) -> Value { return c.router.min_gate_mass; }, 0.875},
      {"affinity.decay", [](v1::ModelSpec* s) { s->mutable_affinity()->set_decay(0.5); },
       [](const ModelConfig& c) -> Value { return c.affinity.decay; }, 0.5},
      {"affinity.boost", [](v1::ModelSpec* s) { s->mutable_affinity()->set_boost(3.0); },
       [](const ModelConfig& c) -> Value { return c.affinity.boost; }, 3.0},
      {"affinity.max_score", [](v1::ModelSpec* s) { s->mutable_affinity()->set_max_score(42.0); },
       [](const ModelConfig& c) -> Value { return c.affinity.max_score; }, 42.0},
      {"affinity.coactivation_decay",
       [](v1::ModelSpec* s) { s->mutable_affinity()->set_coactivation_decay(0.75); },
       [](const ModelConfig& c) -> Value { return c.affinity.coactivation_decay; }, 0.75},
      {"precision.hot_threshold",
       [](v1::ModelSpec* s) { s->mutable_precision()->set_hot_threshold(0.8); },
       [](const ModelConfig& c) -> Value { return c.precision.hot_threshold; }, 0.8},
      {"precision.warm_threshold",
       [](v1::ModelSpec* s) { s->mutable_precision()->set_warm_threshold(0.2); },
       [](const ModelConfig& c) -> Value { return c.precision.warm_threshold; }, 0.2},
      {"precision.hot_precision",
       [](v1::ModelSpec* s) { s->mutable_precision()->set_hot_precision("F16"); },
       [](const ModelConfig& c) -> Value { return c.precision.hot_precision; }, std::string("F16")},
      {"precision.warm_precision",
       [](v1::ModelSpec* s) { s->mutable_precision()->set_warm_precision("Q8_0"); },
       [](const ModelConfig& c) -> Value { return c.precision.warm_precision; },
       std::string("Q8_0")},
      {"routing.preset", [](v1::ModelSpec* s) { s->mutable_routing()->set_preset("gpt_oss"); },
       [](const ModelConfig& c) -> Value {
         return std::string(SelectionName(c.router.rule.selection));
       },
       std::string("top_k_then_softmax")},
      {"routing.score", [](v1::ModelSpec* s) { s->mutable_routing()->set_score("sigmoid"); },
       [](const ModelConfig& c) -> Value {
         return std::string(ScoreFunctionName(c.router.rule.score));
       },
       std::string("sigmoid")},
      {"routing.choice_bias",
       [](v1::ModelSpec* s) {
         s->mutable_routing()->set_choice_bias(true);
         for (int i = 0; i < 16; ++i) s->mutable_routing()->add_bias(0.25f * i);
       },
       [](const ModelConfig& c) -> Value {
         return c.choice_bias.empty() ? 0.0 : static_cast<double>(c.LayerChoiceBias(1)[3]);
       },
       2.75},
      {"routing.selection",
       [](v1::ModelSpec* s) {
         s->mutable_routing()->set_preset("gpt_oss");
         s->mutable_routing()->set_selection("top_k_then_sigmoid");
         s->mutable_routing()->set_normalization("none");
       },
       [](const ModelConfig& c) -> Value {
         return std::string(SelectionName(c.router.rule.selection));
       },
       std::string("top_k_then_sigmoid")},
      {"routing.num_groups", [](v1::ModelSpec* s) { s->mutable_routing()->set_num_groups(2); },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.router.rule.num_groups); },
       2.0},
      {"routing.kept_groups",
       [](v1::ModelSpec* s) {
         s->mutable_routing()->set_num_groups(4);
         s->mutable_routing()->set_kept_groups(2);
       },
       [](const ModelConfig& c) -> Value { return static_cast<double>(c.router.rule.kept_groups); },
       2.0},
      {"routing.group_score",
       [](v1::ModelSpec* s) { s->mutable_routing()->set_group_score("max"); },
       [](const ModelConfig& c) -> Value {
         return std::string(GroupScoreName(c.router.rule.group_score));
       },
       std::string("max")},
      {"routing.masked_groups",
       [](v1::ModelSpec* s) { s->mutable_routing()->set_masked_groups("excluded"); },
       [](const ModelConfig& c) -> Value {
         return std::string(MaskedGroupsName(c.router.rule.masked_groups));
       },
       std::string("excluded")},
      {"routing.normalization",
       [](v1::ModelSpec* s) { s->mutable_routing()->set_normalization("sum_clamped"); },
       [](const ModelConfig& c) -> Value {
         return std::string(NormalizationName(c.router.rule.normalization));
       },
       std::string("sum_clamped")},
      {"routing.normalization_param",
       [](v1::ModelSpec* s) {
         s->mutable_routing()->set_normalization("p_norm");
         s->mutable_routing()->set_normalization_param(2);
       },
       [](const ModelConfig& c) -> Value { return c.router.rule.normalization_param; }, 2.0},
      {"routing.scaling", [](v1::ModelSpec* s) { s->mutable_routing()->set_scaling(2.5); },
       [](const ModelConfig& c) -> Value { return c.router.rule.scaling; }, 2.5},
      {"precision.cold_precision",
       [](v1::ModelSpec* s) { s->mutable_precision()->set_cold_precision("Q4_0"); },
       [](const ModelConfig& c) -> Value { return c.precision.cold_precision; },
       std::string("Q4_0")},
  };
  return *cases;
}

v1::ModelSpec BaseSpec() { return testing::SyntheticSpec("m", 2, 1000, 4); }

TEST(ModelSpecTest, EverySettingReachesTheCoreConfig) {
  for (const FieldCase& c : FieldCases()) {
    v1::ModelSpec spec = BaseSpec();
    c.set(&spec);
    auto config = ConfigFromSpec(spec);
    ASSERT_TRUE(config.ok()) << c.field << ": " << config.status();
    EXPECT_EQ(c.get(*config), c.want) << c.field;
    // The value set differs from what an unset field gives, so the row
    // really tests the conversion.
    auto unset = ConfigFromSpec(BaseSpec());
    ASSERT_TRUE(unset.ok());
    EXPECT_NE(c.get(*unset), c.want) << c.field << " is the default already";
  }
}

TEST(ModelSpecTest, UnsetSettingsKeepTheCoreDefaults) {
  auto config = ConfigFromSpec(BaseSpec());
  ASSERT_TRUE(config.ok()) << config.status();
  ModelConfig defaults;
  defaults.name = "m";
  defaults.num_layers = 2;
  defaults.router.num_experts = 8;
  defaults.router.top_k = 2;
  defaults.budget_bytes = 4000;
  for (const FieldCase& c : FieldCases()) {
    EXPECT_EQ(c.get(*config), c.get(defaults)) << c.field;
  }
  EXPECT_EQ(config->name, "m");
}

// Settings whose 0 means "off" can be set to 0 (proto3 presence), and an
// unset one still takes the default.
TEST(ModelSpecTest, ZeroTurnsASettingOff) {
  v1::ModelSpec spec = BaseSpec();
  spec.set_prefetch_next_layer(0);
  spec.mutable_router()->set_cache_bonus(0);
  spec.mutable_router()->set_prefetch_threshold(0);
  spec.mutable_router()->set_protected_top(0);
  spec.mutable_router()->set_min_gate_mass(0);
  spec.mutable_affinity()->set_boost(0);
  spec.mutable_precision()->set_warm_threshold(0);
  spec.mutable_precision()->set_warmup_tokens(0);
  spec.mutable_targets()->set_min_hit_rate(0);
  auto config = ConfigFromSpec(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  const ModelConfig defaults;
  for (auto [field, value, default_value] :
       {std::tuple{"prefetch_next_layer", static_cast<double>(config->prefetch_next_layer),
                   static_cast<double>(defaults.prefetch_next_layer)},
        std::tuple{"cache_bonus", config->router.cache_bonus, defaults.router.cache_bonus},
        std::tuple{"prefetch_threshold", config->router.prefetch_threshold,
                   defaults.router.prefetch_threshold},
        std::tuple{"protected_top", static_cast<double>(config->router.protected_top),
                   static_cast<double>(defaults.router.protected_top)},
        std::tuple{"min_gate_mass", config->router.min_gate_mass, defaults.router.min_gate_mass},
        std::tuple{"boost", config->affinity.boost, defaults.affinity.boost},
        std::tuple{"warm_threshold", config->precision.warm_threshold,
                   defaults.precision.warm_threshold},
        std::tuple{"warmup_tokens", static_cast<double>(config->precision.warmup_tokens),
                   static_cast<double>(defaults.precision.warmup_tokens)},
        std::tuple{"min_hit_rate", config->targets.min_hit_rate, defaults.targets.min_hit_rate}}) {
    EXPECT_EQ(value, 0.0) << field;
    EXPECT_NE(default_value, 0.0) << field << ": the default is 0 already";
  }
  // The config file says the same in protobuf JSON.
  v1::ModelSpec from_json;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(
                  R"({"name":"m","numLayers":2,"numExperts":8,"topK":2,"budgetBytes":"4000",)"
                  R"("prefetchNextLayer":0,"router":{"cacheBonus":0},"synthetic":{}})",
                  &from_json)
                  .ok());
  EXPECT_TRUE(from_json.has_prefetch_next_layer());
  EXPECT_TRUE(from_json.router().has_cache_bonus());
  EXPECT_FALSE(from_json.router().has_min_gate_mass());
}

// The settings that had no field: set through the spec, checked by name.
TEST(ModelSpecTest, TargetsWarmupAndRangeEmaAreSettable) {
  v1::ModelSpec spec = BaseSpec();
  spec.mutable_router()->set_range_ema_alpha(0.25);
  spec.mutable_precision()->set_warmup_tokens(1000);
  spec.mutable_targets()->set_min_hit_rate(0.5);
  spec.mutable_targets()->set_max_route_us_per_token(3);
  auto config = ConfigFromSpec(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->router.range_ema_alpha, 0.25);
  EXPECT_EQ(config->precision.warmup_tokens, 1000u);
  EXPECT_EQ(config->targets.min_hit_rate, 0.5);
  EXPECT_EQ(config->targets.max_route_us_per_token, 3.0);
  spec.mutable_router()->set_range_ema_alpha(0);
  EXPECT_THAT(std::string(ConfigFromSpec(spec).status().message()),
              ::testing::HasSubstr("router.range_ema_alpha must be in (0, 1]"));
  spec = BaseSpec();
  spec.mutable_targets()->set_min_hit_rate(1.5);
  EXPECT_THAT(std::string(ConfigFromSpec(spec).status().message()),
              ::testing::HasSubstr("model.targets.min_hit_rate must be in [0, 1]"));
}

// The paging threads come from the server (--paging_threads), not the spec.
TEST(ModelSpecTest, RegistryGivesEachModelTheServersPagingThreads) {
  ModelRegistry registry({.paging_threads = 3});
  ASSERT_TRUE(registry.Register(BaseSpec()).ok());
  EXPECT_EQ((*registry.Find("m"))->engine->config().paging.threads, 3u);
  EXPECT_EQ(registry.Unregister("m"), absl::OkStatus());
}

TEST(ModelSpecTest, BadSettingsNameTheirField) {
  v1::ModelSpec spec = BaseSpec();
  spec.mutable_router()->set_max_rank(65);
  EXPECT_THAT(std::string(ConfigFromSpec(spec).status().message()),
              ::testing::HasSubstr("max_rank"));
  spec = BaseSpec();
  spec.set_eviction_policy("belady");
  EXPECT_THAT(std::string(ConfigFromSpec(spec).status().message()),
              ::testing::HasSubstr("model.eviction_policy: unknown eviction policy 'belady'"));
}

TEST(ModelSpecTest, BadRoutingSettingsNameTheirField) {
  const auto error_of = [](const std::function<void(v1::RoutingSettings*)>& set) {
    v1::ModelSpec spec = BaseSpec();
    set(spec.mutable_routing());
    return std::string(ConfigFromSpec(spec).status().message());
  };
  using ::testing::HasSubstr;
  EXPECT_THAT(error_of([](auto* r) { r->set_preset("dense"); }),
              HasSubstr("routing.preset 'dense' is not one of: mixtral"));
  EXPECT_THAT(error_of([](auto* r) { r->set_preset("phimoe"); }), HasSubstr("sparsemixer"));
  EXPECT_THAT(error_of([](auto* r) { r->set_score("tanh"); }),
              HasSubstr("routing.score 'tanh' is not one of: softmax, sigmoid, logits"));
  EXPECT_THAT(error_of([](auto* r) { r->set_num_groups(3); }),
              HasSubstr("routing.num_groups (3) must divide num_experts (8)"));
  EXPECT_THAT(error_of([](auto* r) {
                r->set_num_groups(4);
                r->set_kept_groups(5);
              }),
              HasSubstr("routing.kept_groups (5) must be in [1, num_groups (4)]"));
  EXPECT_THAT(error_of([](auto* r) { r->set_scaling(std::nan("")); }),
              HasSubstr("routing.scaling must be finite and > 0"));
  // The bias: needed by the rule, counted, finite.
  EXPECT_THAT(error_of([](auto* r) { r->set_preset("deepseek_v3"); }),
              HasSubstr("routing.bias: the rule chooses with a bias per (layer, expert); send "
                        "num_layers x num_experts = 16 values"));
  EXPECT_THAT(error_of([](auto* r) {
                r->set_preset("minimax_m2");
                for (int i = 0; i < 15; ++i) r->add_bias(0);
              }),
              HasSubstr("routing.choice_bias has 15 values, the model needs num_layers x "
                        "num_experts = 2 x 8 = 16"));
  EXPECT_THAT(error_of([](auto* r) {
                r->set_preset("minimax_m2");
                for (int i = 0; i < 16; ++i) r->add_bias(i == 9 ? std::nanf("") : 0);
              }),
              HasSubstr("routing.choice_bias of layer 1, expert 1 is NaN"));
  EXPECT_THAT(error_of([](auto* r) { r->add_bias(0.5f); }), HasSubstr("the rule takes none"));
}

// A DeepSeek-style model registered on its checkpoint reads each layer's
// e_score_correction_bias from it: F32 [E] or BF16 [1, E]; a dense first
// layer has none; a layer with experts but no bias is refused by name.
TEST(ModelSpecTest, ChoiceBiasIsReadFromTheCheckpoint) {
  const std::string dir = ::testing::TempDir() + "/bias_checkpoint";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const uint32_t layers = 3, experts = 8;
  // Experts in layers 1 and 2 only (layer 0 is dense).
  std::vector<SafetensorsWriteTensor> tensors;
  for (uint32_t l = 1; l < layers; ++l) {
    for (uint32_t e = 0; e < experts; ++e) {
      tensors.push_back({absl::StrFormat("model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e),
                         "BF16",
                         {2, 4},
                         std::string(16, '\x01')});
    }
  }
  std::vector<float> want(size_t{layers} * experts, 0.0f);
  std::string f32, bf16;
  for (uint32_t e = 0; e < experts; ++e) {
    const float x = 0.125f * e - 0.5f;  // exact in bfloat16
    want[experts + e] = x;
    want[2 * experts + e] = -x;
    f32.append(reinterpret_cast<const char*>(&x), 4);
    const float y = -x;
    uint32_t bits;
    std::memcpy(&bits, &y, 4);
    const uint16_t top = static_cast<uint16_t>(bits >> 16);
    bf16.append(reinterpret_cast<const char*>(&top), 2);
  }
  tensors.push_back({"model.layers.1.mlp.gate.e_score_correction_bias", "F32", {8}, f32});
  ASSERT_TRUE(WriteSafetensors(dir + "/a.safetensors", tensors).ok());
  v1::ModelSpec spec = BaseSpec();
  spec.set_num_layers(layers);
  spec.mutable_safetensors()->set_directory(dir);
  spec.mutable_safetensors()->set_name_preset("deepseek");
  spec.mutable_routing()->set_preset("deepseek_v3");
  spec.mutable_routing()->set_num_groups(2);
  spec.mutable_routing()->set_kept_groups(1);
  // Layer 2's bias is missing: refused, naming the tensor.
  EXPECT_THAT(std::string(WithCheckpointBias(spec).status().message()),
              ::testing::HasSubstr("routing.bias from the checkpoint: tensor "
                                   "'model.layers.2.mlp.gate.e_score_correction_bias' is not in"));
  ASSERT_TRUE(
      WriteSafetensors(dir + "/b.safetensors",
                       {{"model.layers.2.mlp.gate.e_score_correction_bias", "BF16", {1, 8}, bf16}})
          .ok());
  auto resolved = WithCheckpointBias(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_THAT(
      std::vector<float>(resolved->routing().bias().begin(), resolved->routing().bias().end()),
      ::testing::ElementsAreArray(want));
  // The registry routes by them, and hands them to workers; the spec it
  // lists is the one registered.
  ModelRegistry registry(RegistryOptions{});
  ASSERT_TRUE(registry.Register(spec).ok());
  auto hosted = registry.Find("m");
  ASSERT_TRUE(hosted.ok());
  EXPECT_THAT((*hosted)->engine->config().choice_bias, ::testing::ElementsAreArray(want));
  EXPECT_EQ((*hosted)->worker_spec.routing().bias_size(), 24);
  EXPECT_EQ((*hosted)->spec.routing().bias_size(), 0);
  // A spec that gives its own biases keeps them.
  for (int i = 0; i < 24; ++i) spec.mutable_routing()->add_bias(1.0f);
  EXPECT_EQ(WithCheckpointBias(spec)->routing().bias(0), 1.0f);
  EXPECT_EQ(registry.Unregister("m"), absl::OkStatus());
}

}  // namespace
}  // namespace moe_router
