#include "core/cache/worker_cache_view.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_format.h"

namespace moe_router {

WorkerCacheView::WorkerCacheView(std::string name, uint32_t num_layers, uint32_t num_experts,
                                 uint64_t budget_bytes, std::unique_ptr<EvictionPolicy> policy,
                                 std::shared_ptr<const ExpertSizeTable> sizes, uint64_t tick_limit)
    : name_(std::move(name)),
      num_layers_(num_layers),
      num_experts_(num_experts),
      slots_(size_t{num_layers} * num_experts),
      tick_limit_(std::clamp<uint64_t>(tick_limit, 4, kDefaultTickLimit)),
      sizes_(std::move(sizes)),
      policy_(std::move(policy)),
      budget_bytes_(budget_bytes),
      flags_(new std::atomic<uint8_t>[slots_]),
      usage_(new Usage[slots_]),
      clock_{.num_layers = num_layers, .layer_visits = std::vector<uint64_t>(num_layers, 0)},
      pinned_(num_experts, 0),
      touch_(slots_, 0) {
  for (size_t i = 0; i < slots_; ++i) flags_[i].store(0, std::memory_order_relaxed);
}

uint64_t WorkerCacheView::NextId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

uint64_t WorkerCacheView::MemoryBytes() const {
  return FootprintBytes(num_layers_, num_experts_, name_.capacity());
}

uint64_t WorkerCacheView::FootprintBytes(uint32_t num_layers, uint32_t num_experts,
                                         size_t name_bytes) {
  const uint64_t slots = uint64_t{num_layers} * num_experts;
  // Flags, touch bits and usage per slot, visits per layer, pins and last
  // choices per expert.
  return sizeof(WorkerCacheView) + slots * (sizeof(Usage) + 2) + num_layers * sizeof(uint64_t) +
         num_experts * (1 + sizeof(uint32_t)) + name_bytes;
}

absl::Span<const WorkerCacheView::Miss> WorkerCacheView::BeginStep(
    uint32_t layer, absl::Span<const uint32_t> experts) {
  ++ranking_generation_;
  std::fill(pinned_.begin(), pinned_.end(), 0);
  clock_.current_layer = layer;
  const uint64_t visit = ++clock_.layer_visits[layer];
  // Per expert, its uses and the tick of its last use: what a use at a time
  // would leave, with the reuse EMA stepped once per visit as it would be.
  thread_local std::vector<uint32_t> uses;
  thread_local std::vector<uint64_t> last_tick;
  thread_local std::vector<uint32_t> first_use_order;
  uses.assign(num_experts_, 0);
  last_tick.resize(num_experts_);
  first_use_order.clear();
  for (uint32_t e : experts) {
    if (uses[e]++ == 0) first_use_order.push_back(e);
    last_tick[e] = ++clock_.now;
  }
  if (clock_.now - tick_base_ >= tick_limit_) RebaseTicks();
  misses_.clear();
  for (uint32_t e : first_use_order) {
    const ExpertKey key{layer, e};
    Usage& u = usage_[Index(key)];
    u.last_access =
        last_tick[e] > tick_base_ ? static_cast<uint32_t>(last_tick[e] - tick_base_) : 1;
    const uint32_t before = u.accesses;
    u.accesses = static_cast<uint32_t>(
        std::min<uint64_t>(uint64_t{before} + uses[e], std::numeric_limits<uint32_t>::max()));
    const uint64_t last_visit = FullVisit(visit, u.reuse_visit);
    if (visit != last_visit || before == 0) {
      u.reuse = static_cast<float>(ReuseAfterUse(u.reuse, last_visit, visit));
      u.reuse_visit = static_cast<uint32_t>(visit);
    }
    pinned_[e] = 1;
    if (IsResident(key)) {
      counters_.hits += uses[e];
    } else {
      misses_.push_back({e, uses[e]});
    }
  }
  return misses_;
}

void WorkerCacheView::NoteMiss(const Miss& miss, bool placed) {
  if (placed) {
    counters_.misses += 1;
    counters_.hits += miss.uses - 1;
  } else {
    counters_.misses += miss.uses;
    counters_.unplaced += miss.uses;
  }
}

void WorkerCacheView::AddCounters(const WorkerCacheCounters& delta) {
  counters_.routed_tokens += delta.routed_tokens;
  counters_.hits += delta.hits;
  counters_.misses += delta.misses;
  counters_.urgent_loads += delta.urgent_loads;
  counters_.prefetch_loads += delta.prefetch_loads;
  counters_.evictions += delta.evictions;
  counters_.load_bytes += delta.load_bytes;
  counters_.unplaced += delta.unplaced;
}

void WorkerCacheView::RebaseTicks() {
  // Keep the last half of the range exact; older accesses tie as the oldest.
  const uint64_t shift = clock_.now - tick_limit_ / 2 - tick_base_;
  for (size_t i = 0; i < slots_; ++i) {
    uint32_t& last = usage_[i].last_access;
    if (last != 0) last = last > shift ? static_cast<uint32_t>(last - shift) : 1;
  }
  tick_base_ += shift;
}

EntryView WorkerCacheView::View(ExpertKey key) const {
  const Usage& u = usage_[Index(key)];
  const uint64_t visits = clock_.layer_visits[key.layer];
  return EntryView{.key = key,
                   .last_access = u.last_access == 0 ? 0 : tick_base_ + u.last_access,
                   .accesses = u.accesses,
                   .reuse = u.reuse,
                   .reuse_visit = FullVisit(visits, u.reuse_visit)};
}

uint64_t WorkerCacheView::SlotBytes(ExpertKey key) const {
  return sizes_->Bytes(key, flags_[Index(key)].load(std::memory_order_relaxed) - 1);
}

void WorkerCacheView::Note(size_t index) {
  if (touch_[index] != 0) return;
  touch_[index] =
      kTouched | (flags_[index].load(std::memory_order_relaxed) != 0 ? kWasResident : 0);
  touched_.push_back(index);
}

void WorkerCacheView::Remove(ExpertKey key) {
  const size_t index = Index(key);
  Note(index);
  resident_bytes_ -= SlotBytes(key);
  flags_[index].store(0, std::memory_order_relaxed);
}

namespace {

// The ranking of one view's evictable entries, shared by the bookings of a
// call (ranking per booking would cost a scan and a heap each). Per thread,
// not per view: a thousand idle views must not each keep one.
struct CallRanking {
  uint64_t view = 0;
  uint64_t generation = 0;
  EvictionQueue queue;
  std::vector<EntryView> candidates;
  std::vector<uint64_t> bytes;
  EvictionPlan plan;
};
thread_local CallRanking call_ranking;

}  // namespace

WorkerCacheView::Admission WorkerCacheView::MakeRoom(uint64_t need, const EntryView* incoming) {
  CallRanking& ranking = call_ranking;
  if (ranking.view != id_ || ranking.generation != ranking_generation_) {
    ranking.candidates.clear();
    ranking.bytes.clear();
    // Layer by layer: no division to find a slot's key.
    for (uint32_t l = 0; l < num_layers_; ++l) {
      const std::atomic<uint8_t>* flags = &flags_[size_t{l} * num_experts_];
      const bool current = l == clock_.current_layer;
      for (uint32_t e = 0; e < num_experts_; ++e) {
        if (flags[e].load(std::memory_order_relaxed) == 0) continue;
        if (current && pinned_[e] != 0) continue;
        ranking.candidates.push_back(View({l, e}));
        ranking.bytes.push_back(SlotBytes({l, e}));
      }
    }
    ranking.queue.Rank(*policy_, ranking.candidates, ranking.bytes, Clock());
    ranking.view = id_;
    ranking.generation = ranking_generation_;
  }
  EvictionPlan& plan = ranking.plan;
  ranking.queue.Take(
      need, incoming != nullptr ? std::optional(policy_->Keep(*incoming, Clock())) : std::nullopt,
      &plan);
  if (plan.valued_more) return Admission::kValuedMore;
  if (plan.freed < need) return Admission::kNoRoom;
  for (const ExpertKey& victim : plan.victims) Remove(victim);
  if (policy_->RanksByPopulation()) ++ranking_generation_;
  return Admission::kAdmitted;
}

WorkerCacheView::Admission WorkerCacheView::TryAdmit(ExpertKey key, uint8_t variant,
                                                     Priority priority) {
  const size_t index = Index(key);
  if (IsResident(key)) return Admission::kResident;
  const uint64_t bytes = sizes_->Bytes(key, variant);
  if (bytes > budget_bytes_) return Admission::kTooLarge;
  if (resident_bytes_ + bytes > budget_bytes_) {
    std::optional<EntryView> incoming;
    if (priority == Priority::kPrefetch) incoming = AsIfUsedNow(View(key), Clock());
    const Admission room =
        MakeRoom(resident_bytes_ + bytes - budget_bytes_, incoming ? &*incoming : nullptr);
    if (room != Admission::kAdmitted) return room;
  }
  Note(index);
  touch_[index] = (touch_[index] & ~kAdmittedForPrefetch) |
                  (priority == Priority::kPrefetch ? kAdmittedForPrefetch : 0);
  flags_[index].store(variant + 1, std::memory_order_relaxed);
  resident_bytes_ += bytes;
  return Admission::kAdmitted;
}

absl::Status WorkerCacheView::Admit(ExpertKey key, uint8_t variant, Priority priority) {
  const uint64_t need = resident_bytes_ + sizes_->Bytes(key, variant) - budget_bytes_;
  const EvictionPlan& plan = call_ranking.plan;
  switch (TryAdmit(key, variant, priority)) {
    case Admission::kAdmitted:
      return absl::OkStatus();
    case Admission::kResident:
      return absl::AlreadyExistsError(absl::StrFormat("expert %s is resident", key.ToString()));
    case Admission::kTooLarge:
      return absl::ResourceExhaustedError(absl::StrFormat(
          "expert %s needs %d bytes, more than the cache's whole budget of %d bytes",
          key.ToString(), sizes_->Bytes(key, variant), budget_bytes_));
    case Admission::kValuedMore:
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cache '%s' cannot take %s: making room would evict %s, which the %s policy values more",
          name_, key.ToString(), plan.valued_more->ToString(), policy_->name()));
    case Admission::kNoRoom:
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cache '%s' cannot take %s: only %d of the %d bytes needed can be freed (the rest is "
          "this call's experts)",
          name_, key.ToString(), plan.freed, need));
  }
  return absl::InternalError("unknown admission");
}

void WorkerCacheView::Resize(uint64_t budget_bytes) {
  ++ranking_generation_;
  budget_bytes_ = budget_bytes;
  // Nothing is pinned outside a call, so this always succeeds.
  if (resident_bytes_ > budget_bytes_) MakeRoom(resident_bytes_ - budget_bytes_, nullptr);
}

absl::Status WorkerCacheView::Adopt(absl::Span<const std::pair<ExpertKey, uint8_t>> resident) {
  uint64_t total = 0;
  std::vector<uint8_t> seen(slots_, 0);
  for (const auto& [key, variant] : resident) {
    if (seen[Index(key)]++ == 0) total += sizes_->Bytes(key, variant);
  }
  if (total > budget_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cache '%s' would hold %d bytes, over its budget of %d bytes", name_, total,
                        budget_bytes_));
  }
  ++ranking_generation_;
  for (size_t i = 0; i < slots_; ++i) flags_[i].store(0, std::memory_order_relaxed);
  for (const auto& [key, variant] : resident) {
    flags_[Index(key)].store(variant + 1, std::memory_order_relaxed);
  }
  resident_bytes_ = total;
  for (size_t index : touched_) touch_[index] = 0;
  touched_.clear();
  return absl::OkStatus();
}

void WorkerCacheView::SetPolicy(std::unique_ptr<EvictionPolicy> policy) {
  ++ranking_generation_;
  policy_ = std::move(policy);
}

void WorkerCacheView::EndCall(CacheInstructions* instructions) {
  ++ranking_generation_;
  std::fill(pinned_.begin(), pinned_.end(), 0);
  CacheInstructions& out = *instructions;
  out.evictions.clear();
  out.urgent.clear();
  out.prefetch.clear();
  out.load_bytes = 0;
  for (size_t index : touched_) {
    const uint8_t touch = touch_[index];
    touch_[index] = 0;
    const bool now_resident = flags_[index].load(std::memory_order_relaxed) != 0;
    if (((touch & kWasResident) != 0) == now_resident) continue;
    if (!now_resident) {
      out.evictions.push_back(KeyOf(index));
      continue;
    }
    ((touch & kAdmittedForPrefetch) != 0 ? out.prefetch : out.urgent).push_back(KeyOf(index));
    out.load_bytes += SlotBytes(KeyOf(index));
  }
  touched_.clear();
  for (auto* keys : {&out.evictions, &out.urgent, &out.prefetch})
    std::sort(keys->begin(), keys->end());
  counters_.urgent_loads += out.urgent.size();
  counters_.prefetch_loads += out.prefetch.size();
  counters_.evictions += out.evictions.size();
  counters_.load_bytes += out.load_bytes;
}

void WorkerCacheView::SetLastBatch(uint32_t layer, absl::Span<const uint32_t> experts) {
  last_layer_ = layer;
  last_choices_.assign(experts.begin(), experts.end());
}

std::vector<ExpertKey> WorkerCacheView::ResidentKeys() const {
  std::vector<ExpertKey> keys;
  for (size_t i = 0; i < slots_; ++i) {
    if (flags_[i].load(std::memory_order_relaxed) != 0) keys.push_back(KeyOf(i));
  }
  return keys;
}

}  // namespace moe_router
