#include "proto/proto_to_core.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/store/safetensors_store.h"
#include "core/store/synthetic_store.h"

namespace moe_router {

absl::StatusOr<std::string> ExpertPatternOf(const v1::SafetensorsStoreSpec& st) {
  if (!st.pattern().empty()) return st.pattern();
  if (!st.name_preset().empty()) return ExpertPatternPreset(st.name_preset());
  return std::string(kMixtralExpertPattern);
}

absl::StatusOr<RoutingRule> RuleFromSettings(const v1::RoutingSettings& r) {
  absl::StatusOr<RoutingRule> rule = RoutingRulePreset(r.preset().empty() ? "mixtral" : r.preset());
  if (!rule.ok()) return rule.status();
  // Each step's name parsed into the rule's field, when set.
  const auto step = [](const std::string& name, auto parse, auto* field) -> absl::Status {
    if (name.empty()) return absl::OkStatus();
    auto value = parse(name);
    if (!value.ok()) return value.status();
    *field = *value;
    return absl::OkStatus();
  };
  for (absl::Status s : {step(r.score(), ParseScoreFunction, &rule->score),
                         step(r.selection(), ParseSelection, &rule->selection),
                         step(r.group_score(), ParseGroupScore, &rule->group_score),
                         step(r.masked_groups(), ParseMaskedGroups, &rule->masked_groups),
                         step(r.normalization(), ParseNormalization, &rule->normalization)}) {
    if (!s.ok()) return s;
  }
  if (r.has_choice_bias()) rule->choice_bias = r.choice_bias();
  if (r.has_num_groups()) rule->num_groups = r.num_groups();
  if (r.has_kept_groups()) rule->kept_groups = r.kept_groups();
  if (r.has_normalization_param()) rule->normalization_param = r.normalization_param();
  if (r.has_scaling()) rule->scaling = r.scaling();
  return *rule;
}

v1::RoutingSettings SettingsFromRule(const RoutingRule& rule, absl::Span<const float> bias) {
  v1::RoutingSettings s;
  s.set_score(std::string(ScoreFunctionName(rule.score)));
  s.set_choice_bias(rule.choice_bias);
  s.set_selection(std::string(SelectionName(rule.selection)));
  s.set_num_groups(rule.num_groups);
  s.set_kept_groups(rule.kept_groups);
  s.set_group_score(std::string(GroupScoreName(rule.group_score)));
  s.set_masked_groups(std::string(MaskedGroupsName(rule.masked_groups)));
  s.set_normalization(std::string(NormalizationName(rule.normalization)));
  s.set_normalization_param(rule.normalization_param);
  s.set_scaling(rule.scaling);
  *s.mutable_bias() = {bias.begin(), bias.end()};
  return s;
}

absl::StatusOr<v1::ModelSpec> WithCheckpointBias(const v1::ModelSpec& spec) {
  absl::StatusOr<RoutingRule> rule = RuleFromSettings(spec.routing());
  if (!rule.ok()) return rule.status();
  if (!rule->choice_bias || spec.routing().bias_size() != 0 || !spec.has_safetensors()) {
    return spec;
  }
  SafetensorsStoreOptions options{.directory = spec.safetensors().directory()};
  absl::StatusOr<std::string> pattern = ExpertPatternOf(spec.safetensors());
  if (!pattern.ok()) return pattern.status();
  options.expert_pattern = *pattern;
  const std::string& tensor = spec.routing().bias_tensor();
  auto bias = SafetensorsStore::ReadLayerVectors(
      options, tensor.empty() ? kDefaultBiasTensor : tensor, spec.num_layers(), spec.num_experts());
  if (!bias.ok()) {
    return absl::Status(bias.status().code(), absl::StrCat("routing.bias from the checkpoint: ",
                                                           bias.status().message()));
  }
  v1::ModelSpec resolved = spec;
  *resolved.mutable_routing()->mutable_bias() = {bias->begin(), bias->end()};
  return resolved;
}

absl::StatusOr<ModelConfig> ConfigFromSpec(const v1::ModelSpec& spec) {
  ModelConfig c;
  c.name = spec.name();
  c.num_layers = spec.num_layers();
  c.router.num_experts = spec.num_experts();
  c.router.top_k = spec.top_k();
  c.budget_bytes = spec.budget_bytes();
  if (!spec.eviction_policy().empty()) c.eviction_policy = spec.eviction_policy();
  if (spec.has_prefetch_next_layer()) c.prefetch_next_layer = spec.prefetch_next_layer();
  if (spec.has_router()) {
    const v1::RouterSettings& r = spec.router();
    if (r.has_cache_bonus()) c.router.cache_bonus = r.cache_bonus();
    if (r.absolute_bonus()) c.router.bonus_mode = BonusMode::kAbsolute;
    c.router.memory_aware = !r.disable_memory_aware();
    if (r.has_prefetch_threshold()) c.router.prefetch_threshold = r.prefetch_threshold();
    if (r.has_protected_top()) c.router.protected_top = r.protected_top();
    c.router.max_rank = r.max_rank();
    if (r.has_min_gate_mass()) c.router.min_gate_mass = r.min_gate_mass();
    if (r.has_range_ema_alpha()) c.router.range_ema_alpha = r.range_ema_alpha();
  }
  if (spec.has_affinity()) {
    const v1::AffinitySettings& a = spec.affinity();
    if (a.decay() != 0) c.affinity.decay = a.decay();
    if (a.has_boost()) c.affinity.boost = a.boost();
    if (a.max_score() != 0) c.affinity.max_score = a.max_score();
    if (a.coactivation_decay() != 0) c.affinity.coactivation_decay = a.coactivation_decay();
  }
  if (spec.has_precision()) {
    const v1::PrecisionSettings& p = spec.precision();
    if (p.has_hot_threshold()) c.precision.hot_threshold = p.hot_threshold();
    if (p.has_warm_threshold()) c.precision.warm_threshold = p.warm_threshold();
    if (!p.hot_precision().empty()) c.precision.hot_precision = p.hot_precision();
    if (!p.warm_precision().empty()) c.precision.warm_precision = p.warm_precision();
    if (!p.cold_precision().empty()) c.precision.cold_precision = p.cold_precision();
    if (p.has_warmup_tokens()) c.precision.warmup_tokens = p.warmup_tokens();
  }
  if (spec.has_routing()) {
    absl::StatusOr<RoutingRule> rule = RuleFromSettings(spec.routing());
    if (!rule.ok()) return rule.status();
    c.router.rule = *rule;
    c.choice_bias.assign(spec.routing().bias().begin(), spec.routing().bias().end());
    if (rule->choice_bias && c.choice_bias.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "routing.bias: the rule chooses with a bias per (layer, expert); send num_layers x "
          "num_experts = %d values, or register the model on a safetensors checkpoint that holds "
          "them ('%s')",
          uint64_t{spec.num_layers()} * spec.num_experts(),
          spec.routing().bias_tensor().empty() ? kDefaultBiasTensor
                                               : spec.routing().bias_tensor()));
    }
  }
  if (spec.has_targets()) {
    const v1::TargetSettings& t = spec.targets();
    if (t.has_min_hit_rate()) c.targets.min_hit_rate = t.min_hit_rate();
    if (t.has_max_route_us_per_token()) {
      c.targets.max_route_us_per_token = t.max_route_us_per_token();
    }
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

absl::StatusOr<std::shared_ptr<const ExpertStore>> StoreFromSpec(
    const v1::ModelSpec& spec, const std::string& manifest_cache_dir,
    const std::function<absl::Status()>& interrupted) {
  switch (spec.store_case()) {
    case v1::ModelSpec::kSynthetic: {
      auto store =
          SyntheticStore::Create({.num_layers = spec.num_layers(),
                                  .num_experts = spec.num_experts(),
                                  .variants = {{"default", spec.synthetic().expert_bytes()}}});
      if (!store.ok()) return store.status();
      return std::shared_ptr<const ExpertStore>(*std::move(store));
    }
    case v1::ModelSpec::kSafetensors: {
      const v1::SafetensorsStoreSpec& st = spec.safetensors();
      SafetensorsStoreOptions options{.directory = st.directory(),
                                      .manifest_cache_dir = manifest_cache_dir,
                                      .interrupted = interrupted};
      absl::StatusOr<std::string> pattern = ExpertPatternOf(st);
      if (!pattern.ok()) return pattern.status();
      options.expert_pattern = *pattern;
      auto store = SafetensorsStore::Open(options);
      if (!store.ok()) return store.status();
      const ExpertKey extent = (*store)->Extent();
      if (extent.layer < spec.num_layers() || extent.expert < spec.num_experts()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "model.store: %s has %d layers x %d experts, the spec needs %d x %d", st.directory(),
            extent.layer, extent.expert, spec.num_layers(), spec.num_experts()));
      }
      return std::shared_ptr<const ExpertStore>(*std::move(store));
    }
    case v1::ModelSpec::STORE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("model.store: set synthetic or safetensors");
}

}  // namespace moe_router
