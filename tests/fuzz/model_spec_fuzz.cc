// The --config file (protobuf JSON of ServerConfig) on arbitrary text: each
// model it names is registered into a registry with a small memory limit,
// as moe-routerd does at start. Whatever the spec, registration is a status
// and stays within the limit; safetensors stores are pointed at a
// directory that does not exist, so fuzzing reads no files.
#include <google/protobuf/util/json_util.h>

#include <cstdlib>

#include "server/model_registry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moe_router::v1::ServerConfig config;
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (!google::protobuf::util::JsonStringToMessage(text, &config).ok()) return 0;
  constexpr uint64_t kLimit = uint64_t{64} << 20;
  moe_router::ModelRegistry registry(
      {.paging_threads = 1, .worker_caches = {.max_caches = 4}, .memory_limit_bytes = kLimit});
  for (moe_router::v1::ModelSpec& spec : *config.mutable_models()) {
    if (spec.has_safetensors()) spec.mutable_safetensors()->set_directory("/nonexistent/fuzz");
    const auto created = registry.Register(spec);
    if (created.ok() && !registry.Find(spec.name()).ok()) std::abort();
    if (!created.ok() && created.status().message().empty()) std::abort();
  }
  if (registry.committed_bytes() > kLimit) std::abort();
  return 0;
}
