// Server memory per open worker cache: opens N caches on a model engine of
// a given shape and reports the resident-set growth per cache beside what
// the views account for themselves.
//
//   moe_worker_cache_memory [--layers 58] [--experts 256] [--caches 1000]
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "core/engine/model_engine.h"
#include "core/store/synthetic_store.h"

namespace {

// Resident set size in bytes, from /proc/self/statm.
uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

uint32_t Flag(int argc, char** argv, const char* name, uint32_t fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return static_cast<uint32_t>(std::atoi(argv[i + 1]));
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const uint32_t layers = Flag(argc, argv, "--layers", 58);
  const uint32_t experts = Flag(argc, argv, "--experts", 256);
  const uint32_t caches = Flag(argc, argv, "--caches", 1000);
  moe_router::ModelConfig config;
  config.name = "bench";
  config.num_layers = layers;
  config.router.num_experts = experts;
  config.router.top_k = 8;
  config.budget_bytes = uint64_t{1} << 30;
  config.worker_caches.max_caches = caches;
  auto store = moe_router::SyntheticStore::Create(
      {.num_layers = layers, .num_experts = experts, .variants = {{"default", 1 << 20}}});
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  auto engine = moe_router::ModelEngine::Create(config, *std::move(store));
  if (!engine.ok()) return std::fprintf(stderr, "%s\n", engine.status().ToString().c_str()), 1;
  const uint64_t before = ResidentBytes();
  for (uint32_t c = 0; c < caches; ++c) {
    auto opened =
        (*engine)->OpenCache("worker-" + std::to_string(c), uint64_t{64} << 20, "layer_reuse");
    if (!opened.ok()) return std::fprintf(stderr, "%s\n", opened.status().ToString().c_str()), 1;
  }
  const uint64_t after = ResidentBytes();
  const moe_router::ModelStats stats = (*engine)->Stats();
  std::printf(
      "%u x %u experts, %u open caches: resident set +%.1f MiB (%.1f KiB per cache); the views "
      "account for %.1f MiB (%.1f KiB per cache)\n",
      layers, experts, caches, (after - before) / 1048576.0, (after - before) / 1024.0 / caches,
      stats.worker_cache_memory_bytes / 1048576.0,
      stats.worker_cache_memory_bytes / 1024.0 / caches);
  return 0;
}
