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
/// core defaults. Errors name the field.
absl::StatusOr<ModelConfig> ConfigFromSpec(const v1::ModelSpec& spec);

/// Opens the spec's store (synthetic, or a safetensors directory) and checks
/// it covers the model's shape. A safetensors store keeps the manifests it
/// computes in `manifest_cache_dir` ("": memory only) and stops hashing when
/// `interrupted` says so (see SafetensorsStoreOptions).
absl::StatusOr<std::shared_ptr<const ExpertStore>> StoreFromSpec(
    const v1::ModelSpec& spec, const std::string& manifest_cache_dir = "",
    const std::function<absl::Status()>& interrupted = nullptr);

}  // namespace moe_router

#endif  // MOE_ROUTER_PROTO_PROTO_TO_CORE_H_
