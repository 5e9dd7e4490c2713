#ifndef MOE_ROUTER_CORE_MEMORY_TIERS_H_
#define MOE_ROUTER_CORE_MEMORY_TIERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/types.h"

namespace moe_router {

enum class Tier : uint8_t { kFast = 0, kMain = 1, kStorage = 2 };
const char* TierName(Tier tier);

/// One memory tier: how much it holds and how fast an expert moves from it
/// into the fast tier (estimates for planning, not measurements).
struct TierSpec {
  uint64_t capacity_bytes = 0;
  double bandwidth_bytes_per_second = 0;
  double latency_seconds = 0;
};

/// The plan for a model on a tier map.
struct BudgetPlan {
  uint64_t cache_budget_bytes = 0;   // fast-tier bytes for experts
  uint64_t resident_experts = 0;     // experts that fit in it
  double resident_fraction = 0;      // of all experts
  Tier source = Tier::kStorage;      // where the rest is paged from
  double page_in_seconds = 0;        // estimated for one expert
};

/// Fast (accelerator), main (host) and storage tiers with capacities and
/// latency estimates; pins experts into the fast tier.
///
///   auto tiers = MemoryTiers::Preset("desktop");
///   BudgetPlan plan = tiers->Plan(/*expert_bytes=*/176 << 20, /*experts=*/256,
///                                 /*reserved_bytes=*/4ull << 30);
class MemoryTiers {
 public:
  static absl::StatusOr<MemoryTiers> Create(TierSpec fast, TierSpec main, TierSpec storage);
  /// edge-8GB | mobile | desktop | server.
  static absl::StatusOr<MemoryTiers> Preset(absl::string_view name);
  static std::vector<std::string> PresetNames();

  MemoryTiers(const MemoryTiers& other);
  MemoryTiers& operator=(const MemoryTiers&) = delete;

  const TierSpec& tier(Tier t) const { return tiers_[static_cast<int>(t)]; }
  /// Estimated time to page one expert of `bytes` from `from` into fast memory.
  double EstimatePageInSeconds(uint64_t bytes, Tier from) const;
  /// Fits the model's experts into the fast tier after `reserved_bytes`
  /// (dense weights, activations, KV cache), less what is pinned.
  BudgetPlan Plan(uint64_t expert_bytes, uint64_t total_experts, uint64_t reserved_bytes) const;

  /// Pins an expert into the fast tier; RESOURCE_EXHAUSTED past capacity.
  absl::Status Pin(ExpertKey key, uint64_t bytes);
  absl::Status Unpin(ExpertKey key);
  bool IsPinned(ExpertKey key) const;
  uint64_t PinnedBytes() const;

 private:
  MemoryTiers(TierSpec fast, TierSpec main, TierSpec storage) : tiers_{fast, main, storage} {}
  TierSpec tiers_[3];
  mutable absl::Mutex mu_;
  absl::flat_hash_map<ExpertKey, uint64_t> pinned_ ABSL_GUARDED_BY(mu_);
  uint64_t pinned_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_MEMORY_TIERS_H_
