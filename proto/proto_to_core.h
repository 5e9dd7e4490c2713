#ifndef MOE_ROUTER_PROTO_PROTO_TO_CORE_H_
#define MOE_ROUTER_PROTO_PROTO_TO_CORE_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "core/engine/model_engine.h"
#include "core/store/expert_store.h"
#include "moe_router/v1/moe_router.pb.h"

namespace moe_router {

// What arrives over the API (and in the config file), turned into the core's
// types. The other direction is core_to_proto.h.

/// A ModelSpec turned into the core's config; unset settings keep the
/// core defaults. Errors name the field. A rule with a choice bias needs
/// routing.bias (see WithCheckpointBias).
absl::StatusOr<ModelConfig> ConfigFromSpec(const v1::ModelSpec& spec);

/// The routing rule a RoutingSettings describes: its preset (mixtral when
/// unset), each field set changing one step. Errors name the field.
absl::StatusOr<RoutingRule> RuleFromSettings(const v1::RoutingSettings& settings);

/// A rule as RoutingSettings, every step spelled out (no preset), and its
/// biases: what RuleFromSettings turns back into the same rule.
v1::RoutingSettings SettingsFromRule(const RoutingRule& rule, absl::Span<const float> bias = {});

/// The spec with routing.bias read from its safetensors checkpoint
/// (routing.bias_tensor per layer) when its rule takes a choice bias and the
/// spec gives none; otherwise the spec as it is. Reads the checkpoint's
/// headers and those tensors.
absl::StatusOr<v1::ModelSpec> WithCheckpointBias(const v1::ModelSpec& spec);

/// The checkpoint tensor of a layer's choice biases when the spec does not
/// name one.
inline constexpr char kDefaultBiasTensor[] =
    "model.layers.{layer}.mlp.gate.e_score_correction_bias";

/// The expert tensor names of a safetensors spec: its pattern, its
/// preset's, or Mixtral's.
absl::StatusOr<std::string> ExpertPatternOf(const v1::SafetensorsStoreSpec& st);

/// Opens the spec's store (synthetic, or a safetensors directory) and checks
/// it covers the model's shape. A safetensors store keeps the manifests it
/// computes in `manifest_cache_dir` ("": memory only) and stops hashing when
/// `interrupted` says so (see SafetensorsStoreOptions).
absl::StatusOr<std::shared_ptr<const ExpertStore>> StoreFromSpec(
    const v1::ModelSpec& spec, const std::string& manifest_cache_dir = "",
    const std::function<absl::Status()>& interrupted = nullptr);

}  // namespace moe_router

#endif  // MOE_ROUTER_PROTO_PROTO_TO_CORE_H_
