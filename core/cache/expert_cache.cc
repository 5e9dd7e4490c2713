#include "core/cache/expert_cache.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace moe_router {

absl::Status CacheConfig::Validate() const {
  if (num_layers == 0) return absl::InvalidArgumentError("cache.num_layers must be > 0");
  if (num_experts == 0) return absl::InvalidArgumentError("cache.num_experts must be > 0");
  if (budget_bytes == 0) return absl::InvalidArgumentError("cache.budget_bytes must be > 0");
  return absl::OkStatus();
}

PinnedExpert::PinnedExpert(ExpertCache* cache, std::shared_ptr<const ExpertData> data)
    : cache_(cache), data_(std::move(data)) {}

PinnedExpert::PinnedExpert(PinnedExpert&& other) noexcept
    : cache_(std::exchange(other.cache_, nullptr)), data_(std::move(other.data_)) {}

PinnedExpert& PinnedExpert::operator=(PinnedExpert&& other) noexcept {
  if (this != &other) {
    Release();
    cache_ = std::exchange(other.cache_, nullptr);
    data_ = std::move(other.data_);
  }
  return *this;
}

PinnedExpert::~PinnedExpert() { Release(); }

void PinnedExpert::Release() {
  if (cache_ != nullptr && data_ != nullptr) {
    cache_->Unpin(data_->key);
    cache_->NoteRoom();
  }
  cache_ = nullptr;
  data_.reset();
}

absl::StatusOr<std::unique_ptr<ExpertCache>> ExpertCache::Create(
    const CacheConfig& config, std::unique_ptr<EvictionPolicy> policy, EvictionListener on_evict) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (policy == nullptr) return absl::InvalidArgumentError("cache needs an eviction policy");
  return std::unique_ptr<ExpertCache>(
      new ExpertCache(config, std::move(policy), std::move(on_evict)));
}

ExpertCache::ExpertCache(const CacheConfig& config, std::unique_ptr<EvictionPolicy> policy,
                         EvictionListener on_evict)
    : config_(config),
      slots_(size_t{config.num_layers} * config.num_experts),
      on_evict_(std::move(on_evict)),
      step_order_(policy->step_order()),
      tracks_crf_(policy->ReadsCrf()),
      resident_(new std::atomic<uint8_t>[slots_]),
      usage_(new Usage[slots_]),
      layer_visits_(new std::atomic<uint64_t>[config.num_layers]),
      layer_accesses_(new std::atomic<uint64_t>[config.num_layers]),
      layer_tokens_(new std::atomic<uint32_t>[config.num_layers]),
      policy_(std::move(policy)),
      entries_(slots_),
      changed_(slots_),
      index_(config.num_layers, config.num_experts),
      prefetched_unused_(new std::atomic<uint8_t>[slots_]) {
  index_.Reset(policy_.get());
  for (size_t i = 0; i < slots_; ++i) {
    resident_[i].store(0, std::memory_order_relaxed);
    prefetched_unused_[i].store(0, std::memory_order_relaxed);
  }
  for (uint32_t l = 0; l < config.num_layers; ++l) {
    layer_visits_[l].store(0, std::memory_order_relaxed);
    layer_accesses_[l].store(0, std::memory_order_relaxed);
    layer_tokens_[l].store(1, std::memory_order_relaxed);
  }
}

ExpertCache::~ExpertCache() = default;

absl::Status ExpertCache::CheckKey(ExpertKey key) const {
  if (key.layer >= config_.num_layers || key.expert >= config_.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrFormat("expert %s is outside the model (%d layers x %d experts)", key.ToString(),
                        config_.num_layers, config_.num_experts));
  }
  return absl::OkStatus();
}

void ExpertCache::BeginStep(uint32_t layer, uint32_t tokens) {
  layer_tokens_[layer].store(tokens, std::memory_order_relaxed);
  if (layer <= current_layer_.exchange(layer, std::memory_order_relaxed)) {
    pass_start_.store(tick_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  layer_visits_[layer].fetch_add(1, std::memory_order_relaxed);
}

bool ExpertCache::Access(ExpertKey key) {
  const size_t i = Index(key);
  Usage& u = usage_[i];
  u.last_access.store(tick_.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  u.accesses.store(u.accesses.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  u.resident_accesses.store(u.resident_accesses.load(std::memory_order_relaxed) + 1,
                            std::memory_order_relaxed);
  std::atomic<uint64_t>& layer_accesses = layer_accesses_[key.layer];
  const uint64_t layer_access = layer_accesses.load(std::memory_order_relaxed) + 1;
  layer_accesses.store(layer_access, std::memory_order_relaxed);
  u.layer_access.store(layer_access, std::memory_order_relaxed);
  const uint64_t visit = layer_visits_[key.layer].load(std::memory_order_relaxed);
  const uint64_t last_visit = u.reuse_visit.load(std::memory_order_relaxed);
  if (visit != last_visit || u.accesses.load(std::memory_order_relaxed) == 1) {
    u.reuse.store(static_cast<float>(
                      ReuseAfterUse(u.reuse.load(std::memory_order_relaxed), last_visit, visit)),
                  std::memory_order_relaxed);
    if (tracks_crf_) {
      u.crf.store(
          static_cast<float>(CrfAfterUse(u.crf.load(std::memory_order_relaxed), last_visit, visit)),
          std::memory_order_relaxed);
    }
    u.reuse_visit.store(visit, std::memory_order_relaxed);
  }
  changed_.Mark(i);
  const bool hit = resident_[i].load(std::memory_order_acquire) != 0;
  if (hit && prefetched_unused_[i].exchange(0, std::memory_order_relaxed) != 0) {
    prefetch_used_.fetch_add(1, std::memory_order_relaxed);
  }
  return hit;
}

bool ExpertCache::Pin(ExpertKey key) {
  const size_t i = Index(key);
  usage_[i].pins.fetch_add(1, std::memory_order_seq_cst);
  changed_.Mark(i);
  return resident_[i].load(std::memory_order_seq_cst) != 0;
}

void ExpertCache::Unpin(ExpertKey key) {
  const size_t i = Index(key);
  usage_[i].pins.fetch_sub(1, std::memory_order_seq_cst);
  changed_.Mark(i);
}

absl::StatusOr<PinnedExpert> ExpertCache::Get(ExpertKey key) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const Entry& e = entries_[Index(key)];
  if (e.state != State::kResident) {
    return absl::NotFoundError(absl::StrFormat("expert %s is not resident", key.ToString()));
  }
  usage_[Index(key)].pins.fetch_add(1, std::memory_order_seq_cst);
  changed_.Mark(Index(key));
  return PinnedExpert(this, e.data);
}

EntryView ExpertCache::View(size_t index) const {
  const Usage& u = usage_[index];
  return EntryView{.key = KeyOf(index),
                   .last_access = u.last_access.load(std::memory_order_relaxed),
                   .accesses = u.accesses.load(std::memory_order_relaxed),
                   .reuse = u.reuse.load(std::memory_order_relaxed),
                   .reuse_visit = u.reuse_visit.load(std::memory_order_relaxed),
                   .resident_accesses = u.resident_accesses.load(std::memory_order_relaxed),
                   .layer_access = u.layer_access.load(std::memory_order_relaxed),
                   .admitted = u.admitted.load(std::memory_order_relaxed),
                   .crf = u.crf.load(std::memory_order_relaxed)};
}

void ExpertCache::FillClock(CacheClock* clock) const {
  clock->now = tick_.load(std::memory_order_relaxed);
  clock->current_layer = current_layer_.load(std::memory_order_relaxed);
  clock->num_layers = config_.num_layers;
  clock->pass_start = pass_start_.load(std::memory_order_relaxed);
  clock->layer_visits.resize(config_.num_layers);
  clock->layer_accesses.resize(config_.num_layers);
  clock->layer_tokens.resize(config_.num_layers);
  for (uint32_t l = 0; l < config_.num_layers; ++l) {
    clock->layer_visits[l] = layer_visits_[l].load(std::memory_order_relaxed);
    clock->layer_accesses[l] = layer_accesses_[l].load(std::memory_order_relaxed);
    clock->layer_tokens[l] = layer_tokens_[l].load(std::memory_order_relaxed);
  }
}

// What the index reads of an entry, under the cache lock.
class ExpertCache::IndexSource final : public EvictionIndex::Source {
 public:
  explicit IndexSource(const ExpertCache& cache) : cache_(cache) {}
  EntryView View(size_t slot) const override { return cache_.View(slot); }
  uint64_t Bytes(size_t slot) const override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return cache_.entries_[slot].bytes;
  }

 private:
  const ExpertCache& cache_;
};

bool ExpertCache::EvictableLocked(size_t index) const {
  const Entry& e = entries_[index];
  return e.state == State::kResident && e.replacement_bytes == 0 &&
         usage_[index].pins.load(std::memory_order_relaxed) == 0;
}

void ExpertCache::SyncIndexLocked() const {
  changed_.Drain([this](size_t index) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const bool evictable = EvictableLocked(index);
    if (!index_.Contains(index)) {
      if (evictable) index_.Insert(index, entries_[index].bytes, View(index), clock_);
    } else if (evictable) {
      index_.Rekey(index, View(index), clock_);
    } else {
      index_.Erase(index, entries_[index].bytes);
    }
  });
}

void ExpertCache::NotePeakLocked() {
  peak_bytes_ = std::max(peak_bytes_, resident_bytes_ + loading_bytes_);
}

bool ExpertCache::TryEvictLocked(size_t index,
                                 std::vector<std::shared_ptr<const ExpertData>>* released) {
  // Pins are taken without the lock: clear the flag, then look again, so a
  // pin that saw the expert resident is always seen here (seq_cst order).
  std::atomic<uint32_t>& pins = usage_[index].pins;
  if (pins.load(std::memory_order_seq_cst) != 0) return false;
  resident_[index].store(0, std::memory_order_seq_cst);
  if (pins.load(std::memory_order_seq_cst) != 0) {
    resident_[index].store(1, std::memory_order_seq_cst);
    return false;
  }
  Entry& e = entries_[index];
  if (index_.Contains(index)) index_.Erase(index, e.bytes);
  resident_bytes_ -= e.bytes;
  const size_t last = resident_list_.back();
  resident_list_[e.list_pos] = last;
  entries_[last].list_pos = e.list_pos;
  resident_list_.pop_back();
  e.state = State::kAbsent;
  e.bytes = 0;
  usage_[index].resident_accesses.store(0, std::memory_order_relaxed);
  released->push_back(std::move(e.data));
  ++evictions_;
  if (prefetched_unused_[index].exchange(0, std::memory_order_relaxed) != 0) {
    ++prefetch_wasted_;
  }
  if (on_evict_) on_evict_(KeyOf(index));
  NoteRoom();
  return true;
}

absl::Status ExpertCache::PlanEvictionLocked(ExpertKey key, uint64_t bytes,
                                             Priority priority) const {
  plan_.victims.clear();
  const size_t index = Index(key);
  const Entry& entry = entries_[index];
  if (entry.state != State::kAbsent) {
    return absl::AlreadyExistsError(
        absl::StrFormat("expert %s is already %s", key.ToString(),
                        entry.state == State::kResident ? "resident" : "loading"));
  }
  if (bytes > config_.budget_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("expert %s needs %d bytes, more than the whole cache budget of %d bytes",
                        key.ToString(), bytes, config_.budget_bytes));
  }
  const uint64_t used = resident_bytes_ + loading_bytes_;
  if (used + bytes <= config_.budget_bytes) return absl::OkStatus();
  const uint64_t need = used + bytes - config_.budget_bytes;
  FillClock(&clock_);
  SyncIndexLocked();
  EntryView incoming;
  if (priority == Priority::kPrefetch) incoming = AsIfUsedNow(View(index), clock_);
  switch (index_.Take(need, priority == Priority::kPrefetch ? &incoming : nullptr,
                      IndexSource(*this), clock_, &plan_)) {
    case EvictionIndex::Outcome::kTaken:
      return absl::OkStatus();
    case EvictionIndex::Outcome::kValuedMore:
      return absl::ResourceExhaustedError(
          absl::StrFormat("prefetch of %s dropped: making room would evict %s, which the %s policy "
                          "values more",
                          key.ToString(), plan_.valued_more->ToString(), policy_->name()));
    case EvictionIndex::Outcome::kNoRoom:
      break;
  }
  return absl::ResourceExhaustedError(
      absl::StrFormat("cache budget of %d bytes cannot admit %s (%d bytes): %d bytes are resident "
                      "or loading and only %d of them are evictable (the rest pinned or loading)",
                      config_.budget_bytes, key.ToString(), bytes, used, plan_.freed));
}

absl::Status ExpertCache::CanAdmit(ExpertKey key, uint64_t bytes, Priority priority) const {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  return PlanEvictionLocked(key, bytes, priority);
}

absl::Status ExpertCache::Reserve(ExpertKey key, uint64_t bytes, Priority priority) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  std::vector<std::shared_ptr<const ExpertData>> released;  // dropped after unlocking
  absl::MutexLock lock(&mu_);
  if (absl::Status s = PlanEvictionLocked(key, bytes, priority); !s.ok()) return s;
  for (const ExpertKey& victim : plan_.victims) {
    if (!TryEvictLocked(Index(victim), &released)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cache budget of %d bytes cannot admit %s: %s was pinned while making room",
          config_.budget_bytes, key.ToString(), victim.ToString()));
    }
  }
  Entry& entry = entries_[Index(key)];
  entry.state = State::kLoading;
  entry.bytes = bytes;
  entry.loading_priority = priority;
  loading_bytes_ += bytes;
  NotePeakLocked();
  return absl::OkStatus();
}

absl::Status ExpertCache::ReserveReplacement(ExpertKey key, uint64_t bytes) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  Entry& entry = entries_[Index(key)];
  if (entry.state != State::kResident) {
    return absl::FailedPreconditionError(
        absl::StrFormat("expert %s is not resident, nothing to replace", key.ToString()));
  }
  if (entry.replacement_bytes != 0) {
    return absl::AlreadyExistsError(
        absl::StrFormat("expert %s is already being replaced", key.ToString()));
  }
  if (resident_bytes_ + loading_bytes_ + bytes > config_.budget_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no free room to re-page %s (%d bytes) without evicting", key.ToString(), bytes));
  }
  if (index_.Contains(Index(key))) index_.Erase(Index(key), entry.bytes);
  entry.replacement_bytes = bytes;
  loading_bytes_ += bytes;
  NotePeakLocked();
  return absl::OkStatus();
}

absl::Status ExpertCache::Commit(std::shared_ptr<const ExpertData> data) {
  if (data == nullptr) return absl::InvalidArgumentError("commit of a null expert");
  if (absl::Status s = CheckKey(data->key); !s.ok()) return s;
  const size_t index = Index(data->key);
  std::shared_ptr<const ExpertData> replaced;  // dropped after unlocking
  absl::MutexLock lock(&mu_);
  Entry& entry = entries_[index];
  if (entry.state == State::kResident && entry.replacement_bytes != 0) {
    if (data->size != entry.replacement_bytes) {
      return absl::InternalError(absl::StrFormat("re-paged %s has %d bytes, %d were booked",
                                                 data->key.ToString(), data->size,
                                                 entry.replacement_bytes));
    }
    loading_bytes_ -= entry.replacement_bytes;
    resident_bytes_ = resident_bytes_ - entry.bytes + data->size;
    entry.bytes = data->size;
    entry.replacement_bytes = 0;
    replaced = std::exchange(entry.data, std::move(data));
    changed_.Mark(index);
    NoteRoom();
    return absl::OkStatus();
  }
  if (entry.state != State::kLoading) {
    return absl::FailedPreconditionError(
        absl::StrFormat("commit of %s without a reservation", data->key.ToString()));
  }
  if (data->size != entry.bytes) {
    return absl::InternalError(absl::StrFormat("loaded %s has %d bytes, %d were booked",
                                               data->key.ToString(), data->size, entry.bytes));
  }
  loading_bytes_ -= entry.bytes;
  resident_bytes_ += entry.bytes;
  entry.state = State::kResident;
  entry.data = std::move(data);
  usage_[index].admitted.store(tick_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  entry.list_pos = resident_list_.size();
  resident_list_.push_back(index);
  if (entry.loading_priority == Priority::kPrefetch) {
    ++prefetch_loaded_;
    prefetched_unused_[index].store(1, std::memory_order_relaxed);
  }
  resident_[index].store(1, std::memory_order_release);
  changed_.Mark(index);
  NoteRoom();
  return absl::OkStatus();
}

void ExpertCache::Abort(ExpertKey key) {
  if (!CheckKey(key).ok()) return;
  absl::MutexLock lock(&mu_);
  Entry& entry = entries_[Index(key)];
  if (entry.state == State::kLoading) {
    loading_bytes_ -= entry.bytes;
    entry.bytes = 0;
    entry.state = State::kAbsent;
  } else if (entry.state == State::kResident && entry.replacement_bytes != 0) {
    loading_bytes_ -= entry.replacement_bytes;
    entry.replacement_bytes = 0;
    changed_.Mark(Index(key));
  }
  NoteRoom();
}

void ExpertCache::NoteRoom() {
  absl::MutexLock lock(&room_mu_);
  ++room_generation_;
}

uint64_t ExpertCache::RoomGeneration() const {
  absl::MutexLock lock(&room_mu_);
  return room_generation_;
}

bool ExpertCache::AwaitRoom(uint64_t seen, absl::Time deadline) const {
  absl::MutexLock lock(&room_mu_);
  const auto passed = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(room_mu_) {
    return room_generation_ > seen;
  };
  return room_mu_.AwaitWithDeadline(absl::Condition(&passed), deadline);
}

absl::Status ExpertCache::Evict(ExpertKey key) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  std::vector<std::shared_ptr<const ExpertData>> released;  // dropped after unlocking
  absl::MutexLock lock(&mu_);
  const size_t index = Index(key);
  const Entry& entry = entries_[index];
  if (entry.state != State::kResident) {
    return absl::NotFoundError(absl::StrFormat("expert %s is not resident", key.ToString()));
  }
  if (entry.replacement_bytes != 0 || !TryEvictLocked(index, &released)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("expert %s is pinned or being re-paged", key.ToString()));
  }
  return absl::OkStatus();
}

std::string ExpertCache::ResidentPrecision(ExpertKey key) const {
  if (!CheckKey(key).ok()) return "";
  absl::MutexLock lock(&mu_);
  const Entry& entry = entries_[Index(key)];
  return entry.state == State::kResident ? entry.data->precision : "";
}

std::vector<ExpertKey> ExpertCache::ResidentKeys() const {
  absl::MutexLock lock(&mu_);
  std::vector<ExpertKey> keys;
  keys.reserve(resident_list_.size());
  for (size_t i : resident_list_) keys.push_back(KeyOf(i));
  std::sort(keys.begin(), keys.end());
  return keys;
}

CacheStats ExpertCache::Stats() const {
  absl::MutexLock lock(&mu_);
  return CacheStats{.budget_bytes = config_.budget_bytes,
                    .resident_bytes = resident_bytes_,
                    .loading_bytes = loading_bytes_,
                    .peak_bytes = peak_bytes_,
                    .resident_experts = resident_list_.size(),
                    .evictions = evictions_,
                    .prefetch_loaded = prefetch_loaded_,
                    .prefetch_used = prefetch_used_.load(std::memory_order_relaxed),
                    .prefetch_wasted = prefetch_wasted_,
                    .policy = policy_->name()};
}

}  // namespace moe_router
