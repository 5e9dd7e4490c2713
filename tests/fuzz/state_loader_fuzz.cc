// Learned-state files (--state_dir) on arbitrary bytes, loaded into a live
// engine: a refusal changes nothing, and what is accepted exports and
// loads again to the same state.
#include <cstdlib>

#include "core/engine/model_engine.h"
#include "core/store/synthetic_store.h"

namespace {

moe_router::ModelEngine& Engine() {
  static moe_router::ModelEngine* engine = [] {
    moe_router::ModelConfig config;
    config.name = "fuzz";
    config.num_layers = 3;
    config.router.num_experts = 8;
    config.router.top_k = 2;
    config.budget_bytes = 8 * 4096;
    config.paging.threads = 1;
    auto store = moe_router::SyntheticStore::Create(
        {.num_layers = 3, .num_experts = 8, .variants = {{"default", 4096}}});
    return moe_router::ModelEngine::Create(config, *std::move(store))->release();
  }();
  return *engine;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moe_router::ModelEngine& engine = Engine();
  const std::string before = engine.ExportState();
  const absl::Status imported =
      engine.ImportState(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!imported.ok()) {
    if (engine.ExportState() != before) std::abort();
    return 0;
  }
  const std::string after = engine.ExportState();
  if (!engine.ImportState(after).ok() || engine.ExportState() != after) std::abort();
  return 0;
}
