// Paging throughput: experts loaded from a safetensors checkpoint in the
// page cache (pread of exact ranges + XXH3 verification), against reading the
// same files sequentially with plain read(2), with and without hashing.
//   moe_paging_bench --benchmark_filter=Paging
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_replace.h"
#include "core/engine/model_engine.h"
#include "core/store/checksum.h"
#include "core/store/safetensors.h"
#include "core/store/safetensors_store.h"

namespace moe_router {
namespace {

constexpr uint32_t kLayers = 4;
constexpr uint32_t kExperts = 8;
constexpr uint64_t kTensorBytes = 4 << 20;  // 3 tensors: 12 MiB per expert

// A checkpoint written once per process: kLayers shards of kExperts experts.
struct Checkpoint {
  std::string dir;
  std::vector<std::string> files;
  uint64_t expert_bytes = 0;
  uint64_t total_bytes = 0;
  std::shared_ptr<const SafetensorsStore> store;

  Checkpoint() {
    char tmpl[] = "/tmp/moe_paging_bench_XXXXXX";
    dir = mkdtemp(tmpl);
    std::mt19937_64 rng(1);
    for (uint32_t l = 0; l < kLayers; ++l) {
      std::vector<SafetensorsWriteTensor> tensors;
      for (uint32_t e = 0; e < kExperts; ++e) {
        const std::string prefix =
            absl::StrReplaceAll(kMixtralExpertPattern,
                                {{"{layer}", std::to_string(l)}, {"{expert}", std::to_string(e)}});
        for (const char* w : {"w1", "w2", "w3"}) {
          std::string bytes(kTensorBytes, '\0');
          for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
            const uint64_t v = rng();
            std::memcpy(&bytes[i], &v, 8);
          }
          tensors.push_back({prefix + w + ".weight",
                             "BF16",
                             {static_cast<int64_t>(kTensorBytes / 2)},
                             std::move(bytes)});
        }
      }
      files.push_back(dir + "/model-0000" + std::to_string(l) + ".safetensors");
      if (!WriteSafetensors(files.back(), tensors).ok()) std::abort();
    }
    store = *SafetensorsStore::Open({.directory = dir});  // indexes: also warms the page cache
    expert_bytes = 3 * kTensorBytes;
    total_bytes = expert_bytes * kLayers * kExperts;
  }
  ~Checkpoint() { std::filesystem::remove_all(dir); }
};

Checkpoint& Shared() {
  static Checkpoint* checkpoint = new Checkpoint();
  return *checkpoint;
}

void ReadSequentially(benchmark::State& state, bool hash) {
  Checkpoint& c = Shared();
  std::unique_ptr<uint8_t[]> buf(new uint8_t[1 << 20]);
  uint64_t bytes = 0;
  for (auto _ : state) {
    for (const std::string& f : c.files) {
      const int fd = open(f.c_str(), O_RDONLY);
      Xxh3Stream h;
      ssize_t n;
      while ((n = read(fd, buf.get(), 1 << 20)) > 0) {
        if (hash) h.Update({buf.get(), static_cast<size_t>(n)});
        bytes += static_cast<uint64_t>(n);
      }
      benchmark::DoNotOptimize(h.Digest());
      close(fd);
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

void BM_PagingReadSequential(benchmark::State& state) { ReadSequentially(state, false); }
BENCHMARK(BM_PagingReadSequential)->UseRealTime();

void BM_PagingReadSequentialXxh3(benchmark::State& state) { ReadSequentially(state, true); }
BENCHMARK(BM_PagingReadSequentialXxh3)->UseRealTime();

// Store loads of every expert, verified, one at a time.
void BM_PagingStoreLoad(benchmark::State& state) {
  Checkpoint& c = Shared();
  for (auto _ : state) {
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (uint32_t e = 0; e < kExperts; ++e) {
        auto expert = c.store->Load({l, e}, "default");
        if (!expert.ok()) state.SkipWithError("load failed");
        benchmark::DoNotOptimize(expert);
      }
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * c.total_bytes));
}
BENCHMARK(BM_PagingStoreLoad)->UseRealTime();

// The whole page-in path in steady state: the paging pool's workers load
// experts in a cycle through a cache that holds half of them, so every
// page-in evicts one (LRU).
void BM_PagingPoolPageIn(benchmark::State& state) {
  Checkpoint& c = Shared();
  ModelConfig config;
  config.name = "bench";
  config.num_layers = kLayers;
  config.router.num_experts = kExperts;
  config.budget_bytes = c.total_bytes / 2;
  config.eviction_policy = "lru";
  config.paging.threads = static_cast<uint32_t>(state.range(0));
  auto model = *ModelEngine::Create(config, c.store);
  const auto page_all = [&] {
    std::vector<std::shared_ptr<const PageTicket>> tickets;
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (uint32_t e = 0; e < kExperts; ++e) {
        tickets.push_back(model->pool().PageIn({l, e}, Priority::kNormal));
      }
    }
    for (const auto& t : tickets) t->WaitUntil(absl::InfiniteFuture());
  };
  page_all();  // fill the cache
  const uint64_t before = model->metrics().Snapshot().total.paged_bytes;
  for (auto _ : state) page_all();
  // Experts resident when requested complete without a load: count what
  // was actually paged.
  state.SetBytesProcessed(
      static_cast<int64_t>(model->metrics().Snapshot().total.paged_bytes - before));
}
BENCHMARK(BM_PagingPoolPageIn)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime();

}  // namespace
}  // namespace moe_router

BENCHMARK_MAIN();
