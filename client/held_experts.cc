#include "client/held_experts.h"

#include <chrono>

#include "absl/strings/str_format.h"

namespace moe_router {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::Status HeldExperts::CarryOut(absl::Span<const ExpertKey> evictions,
                                   absl::Span<const ExpertKey> loads, WorkerCacheReport* report) {
  for (const ExpertKey& key : evictions) {
    if (held_.count(key) > 0) ++report->evictions;
    Drop(key);
  }
  const auto start = std::chrono::steady_clock::now();
  for (const ExpertKey& key : loads) {
    absl::StatusOr<HeldExpert> expert = Load(key, report);
    if (!expert.ok()) {
      report->load_seconds += SecondsSince(start);
      return absl::Status(expert.status().code(), absl::StrFormat("loading %s: %s", key.ToString(),
                                                                  expert.status().message()));
    }
    bytes_ += expert->size;
    report->loaded_bytes += expert->size;
    ++report->loads;
    held_[key] = *std::move(expert);
  }
  report->load_seconds += SecondsSince(start);
  return absl::OkStatus();
}

absl::StatusOr<HeldExpert> HeldExperts::Get(ExpertKey key, WorkerCacheReport* report) {
  if (const auto it = held_.find(key); it != held_.end()) return it->second;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<HeldExpert> expert = Load(key, report);
  report->load_seconds += SecondsSince(start);
  if (expert.ok()) ++report->streamed;
  return expert;
}

absl::StatusOr<HeldExpert> HeldExperts::Load(ExpertKey key, WorkerCacheReport* report) {
  absl::StatusOr<HeldExpert> expert = source_->Load(key);
  report->failovers += source_->TakeRepeats();
  return expert;
}

void HeldExperts::Drop(ExpertKey key) {
  const auto it = held_.find(key);
  if (it == held_.end()) return;
  bytes_ -= it->second.size;
  held_.erase(it);
}

std::vector<ExpertKey> HeldExperts::Keys() const {
  std::vector<ExpertKey> keys;
  keys.reserve(held_.size());
  for (const auto& [key, expert] : held_) keys.push_back(key);
  return keys;
}

}  // namespace moe_router
