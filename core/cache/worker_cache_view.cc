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
      clock_{.num_layers = num_layers,
             .layer_visits = std::vector<uint64_t>(num_layers, 0),
             .layer_accesses = std::vector<uint64_t>(num_layers, 0),
             .layer_tokens = std::vector<uint32_t>(num_layers, 1)},
      index_(num_layers, num_experts),
      pinned_(num_experts, 0),
      touch_(slots_, 0) {
  for (size_t i = 0; i < slots_; ++i) flags_[i].store(0, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  index_.Reset(policy_.get());
}

// What the index reads of an entry, under the view's lock.
class WorkerCacheView::IndexSource final : public EvictionIndex::Source {
 public:
  explicit IndexSource(const WorkerCacheView& view) : view_(view) {}
  EntryView View(size_t slot) const override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return view_.View(view_.KeyOf(slot));
  }
  uint64_t Bytes(size_t slot) const override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return view_.SlotBytes(view_.KeyOf(slot));
  }

 private:
  const WorkerCacheView& view_;
};

uint64_t WorkerCacheView::MemoryBytes() const {
  return FootprintBytes(num_layers_, num_experts_, name_.capacity());
}

uint64_t WorkerCacheView::FootprintBytes(uint32_t num_layers, uint32_t num_experts,
                                         size_t name_bytes) {
  const uint64_t slots = uint64_t{num_layers} * num_experts;
  // Flags, touch bits, usage and the index per slot (at most: two orders),
  // visits, accesses and tokens per layer, pins and last choices per
  // expert.
  return sizeof(WorkerCacheView) + slots * (sizeof(Usage) + 2 + EvictionIndex::kMaxBytesPerSlot) +
         num_layers * (2 * sizeof(uint64_t) + sizeof(uint32_t)) +
         num_experts * (1 + 2 * sizeof(uint32_t)) + name_bytes;
}

absl::Span<const WorkerCacheView::Miss> WorkerCacheView::BeginStep(
    uint32_t layer, uint32_t tokens, absl::Span<const uint32_t> experts) {
  EndSnapshot();
  ReleasePins();
  if (layer <= clock_.current_layer) clock_.pass_start = clock_.now;
  clock_.current_layer = layer;
  clock_.layer_tokens[layer] = tokens;
  const uint64_t visit = ++clock_.layer_visits[layer];
  // Per expert, its uses and the ticks (global and the layer's) of its last
  // use: what a use at a time would leave, with the reuse EMA stepped once
  // per visit as it would be.
  thread_local std::vector<uint32_t> uses;
  thread_local std::vector<uint64_t> last_tick, last_layer_access;
  thread_local std::vector<uint32_t> first_use_order;
  uses.assign(num_experts_, 0);
  last_tick.resize(num_experts_);
  last_layer_access.resize(num_experts_);
  first_use_order.clear();
  for (uint32_t e : experts) {
    if (uses[e]++ == 0) first_use_order.push_back(e);
  }
  const auto touch = [&](uint32_t e) {
    last_tick[e] = ++clock_.now;
    last_layer_access[e] = ++clock_.layer_accesses[layer];
  };
  const bool per_use = policy_->step_order() == StepOrder::kAsRouted;
  const bool tracks_crf = policy_->ReadsCrf();
  if (per_use) {
    for (uint32_t e : experts) touch(e);
  } else {
    // Each distinct expert touched once, in the policy's order.
    ArrangeStep(policy_->step_order(), first_use_order, [&](uint32_t e) {
      return IsResident({layer, e});
    });
    for (uint32_t e : first_use_order) touch(e);
  }
  if (clock_.now - tick_base_ >= tick_limit_) RebaseTicks();
  misses_.clear();
  for (uint32_t e : first_use_order) {
    const ExpertKey key{layer, e};
    Usage& u = usage_[Index(key)];
    u.last_access = Relative(last_tick[e]);
    u.layer_access = static_cast<uint32_t>(last_layer_access[e]);
    // Counted as the cache counts its accesses: every use, or once a step
    // where the policy touches a step's experts once each.
    const uint64_t counted = per_use ? uses[e] : 1;
    u.resident_accesses = static_cast<uint32_t>(std::min<uint64_t>(
        uint64_t{u.resident_accesses} + counted, std::numeric_limits<uint32_t>::max()));
    const uint32_t before = u.accesses;
    u.accesses = static_cast<uint32_t>(
        std::min<uint64_t>(uint64_t{before} + counted, std::numeric_limits<uint32_t>::max()));
    const uint64_t last_visit = FullVisit(visit, u.reuse_visit);
    if (visit != last_visit || before == 0) {
      u.reuse = static_cast<float>(ReuseAfterUse(u.reuse, last_visit, visit));
      if (tracks_crf) u.crf = static_cast<float>(CrfAfterUse(u.crf, last_visit, visit));
      u.reuse_visit = static_cast<uint32_t>(visit);
    }
    pinned_[e] = 1;
    pinned_list_.push_back(e);
    if (index_.Contains(Index(key))) index_.Erase(Index(key), SlotBytes(key));
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
    for (uint32_t* tick : {&usage_[i].last_access, &usage_[i].admitted}) {
      if (*tick != 0) *tick = *tick > shift ? static_cast<uint32_t>(*tick - shift) : 1;
    }
  }
  tick_base_ += shift;
  index_.RekeyAll(IndexSource(*this), clock_);
}

EntryView WorkerCacheView::View(ExpertKey key) const {
  const Usage& u = usage_[Index(key)];
  const uint64_t visits = clock_.layer_visits[key.layer];
  return EntryView{.key = key,
                   .last_access = u.last_access == 0 ? 0 : tick_base_ + u.last_access,
                   .accesses = u.accesses,
                   .reuse = u.reuse,
                   .reuse_visit = FullVisit(visits, u.reuse_visit),
                   .resident_accesses = u.resident_accesses,
                   .layer_access = FullVisit(clock_.layer_accesses[key.layer], u.layer_access),
                   .admitted = u.admitted == 0 ? 0 : tick_base_ + u.admitted,
                   .crf = u.crf};
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
  if (index_.Contains(index)) index_.Erase(index, SlotBytes(key));
  flags_[index].store(0, std::memory_order_relaxed);
  usage_[index].resident_accesses = 0;
}

void WorkerCacheView::EndSnapshot() {
  snapshot_open_ = false;
  for (size_t index : deferred_) {
    if (IsResident(KeyOf(index)) && !index_.Contains(index) && !IsPinned(index)) {
      index_.Insert(index, SlotBytes(KeyOf(index)), View(KeyOf(index)), clock_);
    }
  }
  deferred_.clear();
}

void WorkerCacheView::ReleasePins() {
  for (uint32_t e : pinned_list_) {
    pinned_[e] = 0;
    const ExpertKey key{clock_.current_layer, e};
    if (IsResident(key) && !index_.Contains(Index(key))) {
      index_.Insert(Index(key), SlotBytes(key), View(key), clock_);
    }
  }
  pinned_list_.clear();
}

void WorkerCacheView::RebuildIndex() {
  index_.Reset(policy_.get());
  snapshot_open_ = false;
  deferred_.clear();
  for (size_t i = 0; i < slots_; ++i) {
    if (IsResident(KeyOf(i)) && !IsPinned(i))
      index_.Insert(i, SlotBytes(KeyOf(i)), View(KeyOf(i)), clock_);
  }
}

WorkerCacheView::Admission WorkerCacheView::MakeRoom(uint64_t need, const EntryView* incoming) {
  // The call's first booking ranks at the clock and scores of that moment;
  // the others share its ranking, as they always have.
  const bool first = !snapshot_open_;
  snapshot_open_ = true;
  switch (index_.Take(need, incoming, IndexSource(*this), clock_, &plan_, first)) {
    case EvictionIndex::Outcome::kTaken:
      break;
    case EvictionIndex::Outcome::kValuedMore:
      return Admission::kValuedMore;
    case EvictionIndex::Outcome::kNoRoom:
      return Admission::kNoRoom;
  }
  for (const ExpertKey& victim : plan_.victims) Remove(victim);
  if (policy_->RanksByPopulation()) EndSnapshot();
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
  usage_[index].admitted = Relative(clock_.now);
  resident_bytes_ += bytes;
  if (snapshot_open_) {
    deferred_.push_back(index);
  } else if (!IsPinned(index)) {
    index_.Insert(index, bytes, View(key), clock_);
  }
  return Admission::kAdmitted;
}

absl::Status WorkerCacheView::Admit(ExpertKey key, uint8_t variant, Priority priority) {
  const uint64_t need = resident_bytes_ + sizes_->Bytes(key, variant) - budget_bytes_;
  const EvictionPlan& plan = plan_;
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
  EndSnapshot();
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
  for (size_t i = 0; i < slots_; ++i) flags_[i].store(0, std::memory_order_relaxed);
  for (const auto& [key, variant] : resident) {
    flags_[Index(key)].store(variant + 1, std::memory_order_relaxed);
  }
  resident_bytes_ = total;
  for (size_t index : touched_) touch_[index] = 0;
  touched_.clear();
  RebuildIndex();
  return absl::OkStatus();
}

void WorkerCacheView::SetPolicy(std::unique_ptr<EvictionPolicy> policy) {
  // CRF was not kept under a policy that does not read it: counted afresh,
  // as a new llama.cpp cache counts.
  if (policy->ReadsCrf() && !policy_->ReadsCrf()) {
    for (size_t i = 0; i < slots_; ++i) usage_[i].crf = 0;
  }
  policy_ = std::move(policy);
  RebuildIndex();
}

void WorkerCacheView::EndCall(CacheInstructions* instructions) {
  EndSnapshot();
  ReleasePins();
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
