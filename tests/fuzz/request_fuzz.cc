// Request handlers on arbitrary bytes: the input is a sequence of records
// [kind][length, 2 bytes little-endian][payload], each payload decoded as
// that kind's request message and fed to one live engine, as the service
// does: RouteTokens, Prefetch, OpenCache, SyncCache, CloseCache,
// GetModelStats and FetchExpert. Every call answers with a status; the
// server's and every worker cache's residency stay within their budgets.
#include <cstdlib>
#include <vector>

#include "absl/time/clock.h"
#include "core/engine/model_engine.h"
#include "core/store/synthetic_store.h"
#include "moe_router/v1/moe_router.pb.h"

namespace {

using moe_router::ExpertKey;
using moe_router::ModelEngine;

constexpr uint64_t kExpertBytes = 4096;
constexpr uint32_t kMaxTokens = 256;  // the service's per-request limit, scaled down

std::unique_ptr<ModelEngine> NewEngine() {
  moe_router::ModelConfig config;
  config.name = "fuzz";
  config.num_layers = 4;
  config.router.num_experts = 8;
  config.router.top_k = 2;
  config.budget_bytes = 12 * kExpertBytes;
  config.paging.threads = 1;
  config.worker_caches.max_caches = 4;
  auto store = moe_router::SyntheticStore::Create(
      {.num_layers = 4, .num_experts = 8, .variants = {{"default", kExpertBytes}}});
  return *ModelEngine::Create(config, *std::move(store));
}

void Check(const absl::Status& status) {
  if (!status.ok() && status.message().empty()) std::abort();
}

// `opened` collects the caches OpenCache was asked for, to check at the end.
void Handle(ModelEngine& engine, uint8_t kind, const std::string& payload,
            std::vector<std::string>* opened) {
  namespace v1 = moe_router::v1;
  switch (kind % 7) {
    case 0: {
      v1::RouteTokensRequest r;
      if (!r.ParseFromString(payload)) return;
      // The service refuses these first.
      if (static_cast<uint32_t>(r.gate_logits_size()) / 8 > kMaxTokens) return;
      Check(engine.Route(r.layer(), r.gate_logits(), r.cache()).status());
      return;
    }
    case 1: {
      v1::PrefetchRequest r;
      if (!r.ParseFromString(payload)) return;
      Check(engine
                .Prefetch({.layer = r.layer(),
                           .experts = r.experts(),
                           .budget = r.budget(),
                           .gate_logits = r.gate_logits(),
                           .cache = r.cache()})
                .status());
      return;
    }
    case 2: {
      v1::OpenCacheRequest r;
      if (!r.ParseFromString(payload)) return;
      Check(engine.OpenCache(r.cache(), r.budget_bytes(), r.eviction_policy()).status());
      opened->push_back(r.cache());
      return;
    }
    case 3: {
      v1::SyncCacheRequest r;
      if (!r.ParseFromString(payload)) return;
      std::vector<ExpertKey> resident;
      for (const auto& ref : r.resident()) resident.push_back({ref.layer(), ref.expert()});
      Check(engine.SyncCache(r.cache(), resident).status());
      return;
    }
    case 4: {
      v1::CloseCacheRequest r;
      if (!r.ParseFromString(payload)) return;
      Check(engine.CloseCache(r.cache()));
      return;
    }
    case 5: {
      v1::GetModelStatsRequest r;
      if (!r.ParseFromString(payload)) return;
      if (r.cache().empty()) {
        engine.Stats();
      } else {
        Check(engine.CacheStats(r.cache()).status());
      }
      return;
    }
    case 6: {
      v1::FetchExpertRequest r;
      if (!r.ParseFromString(payload)) return;
      Check(engine.Fetch({r.layer(), r.expert()}, absl::Now() + absl::Seconds(5)).status());
      return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::unique_ptr<ModelEngine> engine = NewEngine();
  std::vector<std::string> caches;
  for (size_t at = 0; at + 3 <= size;) {
    const uint8_t kind = data[at];
    const size_t length = std::min<size_t>(data[at + 1] | (data[at + 2] << 8), size - at - 3);
    const std::string payload(reinterpret_cast<const char*>(data + at + 3), length);
    at += 3 + length;
    Handle(*engine, kind, payload, &caches);
  }
  const moe_router::ModelStats stats = engine->Stats();
  if (stats.cache.resident_bytes > stats.cache.budget_bytes) std::abort();
  for (const std::string& cache : caches) {
    const auto s = engine->CacheStats(cache);
    if (s.ok() && s->resident_bytes > s->budget_bytes) std::abort();
  }
  return 0;
}
