#include "core/memory_tiers.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace moe_router {
namespace {
constexpr uint64_t kGiB = 1ull << 30;
constexpr double kGBps = 1e9;
}  // namespace

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kFast:
      return "fast";
    case Tier::kMain:
      return "main";
    case Tier::kStorage:
      return "storage";
  }
  return "unknown";
}

absl::StatusOr<MemoryTiers> MemoryTiers::Create(TierSpec fast, TierSpec main,
                                                TierSpec storage) {
  if (fast.capacity_bytes == 0) {
    return absl::InvalidArgumentError("tiers: the fast tier needs a capacity > 0");
  }
  for (const auto& [name, spec] : {std::pair{"main", main}, std::pair{"storage", storage}}) {
    if (spec.capacity_bytes > 0 && !(spec.bandwidth_bytes_per_second > 0)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tiers: the %s tier needs a bandwidth > 0", name));
    }
    if (spec.latency_seconds < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tiers: the %s tier latency must be >= 0", name));
    }
  }
  return MemoryTiers(fast, main, storage);
}

std::vector<std::string> MemoryTiers::PresetNames() {
  return {"edge-8GB", "mobile", "desktop", "server"};
}

absl::StatusOr<MemoryTiers> MemoryTiers::Preset(absl::string_view name) {
  // Typical figures: unified-memory edge boards and phones page from flash;
  // desktops and servers from host RAM over PCIe 4 / PCIe 5, with NVMe below.
  if (name == "edge-8GB") {
    return Create({6 * kGiB, 50 * kGBps, 1e-6}, {}, {256 * kGiB, 2 * kGBps, 80e-6});
  }
  if (name == "mobile") {
    return Create({4 * kGiB, 30 * kGBps, 1e-6}, {}, {128 * kGiB, 1 * kGBps, 150e-6});
  }
  if (name == "desktop") {
    return Create({24 * kGiB, 900 * kGBps, 1e-6}, {64 * kGiB, 25 * kGBps, 10e-6},
                  {2048 * kGiB, 5 * kGBps, 80e-6});
  }
  if (name == "server") {
    return Create({80 * kGiB, 2000 * kGBps, 1e-6}, {1024 * kGiB, 50 * kGBps, 10e-6},
                  {8192 * kGiB, 12 * kGBps, 50e-6});
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "unknown tier preset '%s' (expected edge-8GB, mobile, desktop or server)", name));
}

MemoryTiers::MemoryTiers(const MemoryTiers& other)
    : tiers_{other.tiers_[0], other.tiers_[1], other.tiers_[2]} {
  absl::MutexLock lock(&other.mu_);
  pinned_ = other.pinned_;
  pinned_bytes_ = other.pinned_bytes_;
}

double MemoryTiers::EstimatePageInSeconds(uint64_t bytes, Tier from) const {
  if (from == Tier::kFast) return 0;
  const TierSpec& spec = tier(from);
  return spec.latency_seconds + static_cast<double>(bytes) / spec.bandwidth_bytes_per_second;
}

BudgetPlan MemoryTiers::Plan(uint64_t expert_bytes, uint64_t total_experts,
                             uint64_t reserved_bytes) const {
  BudgetPlan plan;
  const uint64_t fast = tier(Tier::kFast).capacity_bytes;
  const uint64_t pinned = PinnedBytes();
  const uint64_t used = reserved_bytes + pinned;
  const uint64_t all = expert_bytes * total_experts;
  plan.cache_budget_bytes = std::min(fast > used ? fast - used : 0, all);
  plan.resident_experts =
      expert_bytes == 0 ? 0 : std::min(total_experts, plan.cache_budget_bytes / expert_bytes);
  plan.resident_fraction =
      total_experts == 0 ? 0 : static_cast<double>(plan.resident_experts) / total_experts;
  // Whatever is not resident waits in host memory if it all fits there.
  plan.source = tier(Tier::kMain).capacity_bytes >= all ? Tier::kMain : Tier::kStorage;
  plan.page_in_seconds = EstimatePageInSeconds(expert_bytes, plan.source);
  return plan;
}

absl::Status MemoryTiers::Pin(ExpertKey key, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (pinned_.contains(key)) return absl::OkStatus();
  if (pinned_bytes_ + bytes > tier(Tier::kFast).capacity_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "pinning %s (%d bytes) would exceed the fast tier (%d of %d bytes pinned)",
        key.ToString(), bytes, pinned_bytes_, tier(Tier::kFast).capacity_bytes));
  }
  pinned_[key] = bytes;
  pinned_bytes_ += bytes;
  return absl::OkStatus();
}

absl::Status MemoryTiers::Unpin(ExpertKey key) {
  absl::MutexLock lock(&mu_);
  const auto it = pinned_.find(key);
  if (it == pinned_.end()) {
    return absl::NotFoundError(absl::StrFormat("expert %s is not pinned", key.ToString()));
  }
  pinned_bytes_ -= it->second;
  pinned_.erase(it);
  return absl::OkStatus();
}

bool MemoryTiers::IsPinned(ExpertKey key) const {
  absl::MutexLock lock(&mu_);
  return pinned_.contains(key);
}

uint64_t MemoryTiers::PinnedBytes() const {
  absl::MutexLock lock(&mu_);
  return pinned_bytes_;
}

}  // namespace moe_router
