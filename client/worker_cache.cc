#include "client/worker_cache.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace moe_router {
namespace {

// Backoff between the attempts of a call whose replica was lost: the
// proxy needs a moment to take it out.
absl::Duration NextBackoff(absl::Duration backoff) {
  return std::min(2 * backoff, absl::Milliseconds(500));
}
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(20);

class ServerSource final : public ExpertSource {
 public:
  ServerSource(Client& client, std::string model, std::string cache,
               const FailoverOptions& failover)
      : client_(client.WithTimeout(failover.fetch_attempt_timeout)),
        model_(std::move(model)),
        cache_(std::move(cache)),
        call_deadline_(failover.call_deadline) {}
  absl::StatusOr<HeldExpert> Load(ExpertKey key) override {
    const absl::Time deadline = absl::Now() + call_deadline_;
    absl::StatusOr<FetchedExpert> fetched;
    for (absl::Duration backoff = kFirstBackoff;; backoff = NextBackoff(backoff)) {
      fetched = client_->Fetch(model_, key.layer, key.expert, cache_);
      if (!ReplicaLost(fetched.status()) || absl::Now() + backoff >= deadline) break;
      ++repeats_;
      absl::SleepFor(backoff);
    }
    if (!fetched.ok()) return fetched.status();
    auto owner = std::make_shared<const std::string>(std::move(fetched->bytes));
    const auto* data = reinterpret_cast<const uint8_t*>(owner->data());
    return HeldExpert{.bytes = std::shared_ptr<const uint8_t>(owner, data), .size = owner->size()};
  }

  uint64_t TakeRepeats() override { return std::exchange(repeats_, 0); }

 private:
  const std::unique_ptr<Client> client_;
  const std::string model_;
  const std::string cache_;
  const absl::Duration call_deadline_;
  uint64_t repeats_ = 0;
};

class StoreSource final : public ExpertSource {
 public:
  explicit StoreSource(std::shared_ptr<const ExpertStore> store) : store_(std::move(store)) {}
  absl::StatusOr<HeldExpert> Load(ExpertKey key) override {
    auto data = store_->Load(key, store_->Precisions().front());
    if (!data.ok()) return data.status();
    const uint8_t* bytes = (*data)->bytes.get();
    const uint64_t size = (*data)->size;
    return HeldExpert{.bytes = std::shared_ptr<const uint8_t>(*std::move(data), bytes),
                      .size = size};
  }

 private:
  const std::shared_ptr<const ExpertStore> store_;
};

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void AppendKeys(const google::protobuf::RepeatedPtrField<v1::ExpertRef>& refs,
                std::vector<ExpertKey>* keys) {
  for (const v1::ExpertRef& ref : refs) keys->push_back({ref.layer(), ref.expert()});
}

}  // namespace

bool ReplicaLost(const absl::Status& status) {
  // gRPC core reports a stream cut with its connection (a replica killed
  // mid-stream, the proxy resetting it) as UNKNOWN "Stream removed" where
  // UNAVAILABLE is meant (grpc/grpc#34076); the server never answers UNKNOWN.
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
         (absl::IsUnknown(status) && status.message() == "Stream removed");
}

std::unique_ptr<ExpertSource> ServerExpertSource(Client& client, std::string model,
                                                 std::string cache,
                                                 const FailoverOptions& failover) {
  return std::make_unique<ServerSource>(client, std::move(model), std::move(cache), failover);
}

std::unique_ptr<ExpertSource> StoreExpertSource(std::shared_ptr<const ExpertStore> store) {
  return std::make_unique<StoreSource>(std::move(store));
}

absl::StatusOr<std::unique_ptr<WorkerCache>> WorkerCache::Open(
    Client& client, const Options& options, std::unique_ptr<ExpertSource> source) {
  if (source == nullptr) return absl::InvalidArgumentError("a worker cache needs an expert source");
  auto info =
      client.OpenCache(options.model, options.cache, options.budget_bytes, options.eviction_policy);
  if (!info.ok()) return info.status();
  auto cache = std::unique_ptr<WorkerCache>(new WorkerCache(client, options, std::move(source)));
  cache->policy_ = info->eviction_policy();
  // A restarted worker holds nothing, whatever its cache remembers.
  if (info->resident_size() > 0) {
    if (absl::Status s = cache->Resync(); !s.ok()) return s;
  }
  return cache;
}

absl::Status WorkerCache::CarryOut(
    const google::protobuf::RepeatedPtrField<v1::ExpertRef>& evictions,
    const std::vector<ExpertKey>& loads) {
  std::vector<ExpertKey> drops;
  AppendKeys(evictions, &drops);
  if (absl::Status s = held_.CarryOut(drops, loads, &report_); !s.ok()) {
    if (absl::Status synced = Resync(); !synced.ok()) return synced;
    return absl::Status(s.code(), absl::StrFormat("cache '%s': %s", options_.cache, s.message()));
  }
  return absl::OkStatus();
}

template <typename Call>
auto WorkerCache::Reliably(Call call) -> decltype(call()) {
  const absl::Time deadline = absl::Now() + options_.failover.call_deadline;
  absl::Duration backoff = kFirstBackoff;
  bool reopened = false;
  while (true) {
    auto result = call();
    if (absl::IsNotFound(result.status()) && !reopened) {
      // Moved or expired: reopened once (NOT_FOUND for the model too: then
      // reopening fails and says so).
      reopened = true;
    } else if (ReplicaLost(result.status()) && absl::Now() + backoff < deadline) {
      // The replica may have applied the call before it was lost: the
      // view is restated before the call is repeated, wherever it lands.
      ++report_.failovers;
      absl::SleepFor(backoff);
      backoff = NextBackoff(backoff);
    } else {
      return result;
    }
    absl::Status restated = Reopen();
    while (ReplicaLost(restated) && absl::Now() + backoff < deadline) {
      ++report_.failovers;
      absl::SleepFor(backoff);
      backoff = NextBackoff(backoff);
      restated = Reopen();
    }
    if (!restated.ok()) return restated;
  }
}

absl::Status WorkerCache::Reopen() {
  auto info = client_->OpenCache(options_.model, options_.cache, options_.budget_bytes,
                                 options_.eviction_policy);
  if (!info.ok()) return info.status();
  ++report_.reopens;
  policy_ = info->eviction_policy();
  absl::Status stated = StateHeld().status();
  if (absl::IsNotFound(stated)) {
    // Opened on one replica, gone on the next call: the proxy moved the
    // cache between the two (a replica just left its ring). Another try.
    return absl::UnavailableError(absl::StrFormat(
        "cache '%s' moved between OpenCache and SyncCache: %s", options_.cache, stated.message()));
  }
  return stated;
}

absl::StatusOr<v1::RouteTokensResponse> WorkerCache::Route(uint32_t layer,
                                                           absl::Span<const float> logits) {
  const auto start = std::chrono::steady_clock::now();
  auto routed =
      Reliably([&] { return client_->Route(options_.model, layer, logits, options_.cache); });
  report_.route_seconds += SecondsSince(start);
  if (!routed.ok()) return routed.status();
  ++report_.route_calls;
  report_.tokens += routed->tokens();
  report_.accesses += routed->resident_size();
  for (bool resident : routed->resident()) report_.hits += resident;
  std::vector<ExpertKey> loads;
  AppendKeys(routed->urgent_page_ins(), &loads);
  AppendKeys(routed->prefetches(), &loads);
  if (absl::Status s = CarryOut(routed->evictions(), loads); !s.ok()) return s;
  return routed;
}

absl::StatusOr<v1::PrefetchResponse> WorkerCache::Prefetch(uint32_t layer,
                                                           absl::Span<const float> gate_logits,
                                                           uint32_t budget) {
  v1::PrefetchRequest request;
  request.set_model(options_.model);
  request.set_cache(options_.cache);
  request.set_layer(layer);
  request.set_budget(budget);
  request.mutable_gate_logits()->Add(gate_logits.begin(), gate_logits.end());
  const auto start = std::chrono::steady_clock::now();
  auto answer = Reliably([&] { return client_->Prefetch(request); });
  report_.route_seconds += SecondsSince(start);
  if (!answer.ok()) return answer.status();
  std::vector<ExpertKey> loads;
  for (uint32_t e : answer->queued()) loads.push_back({layer, e});
  if (absl::Status s = CarryOut(answer->evictions(), loads); !s.ok()) return s;
  return answer;
}

absl::StatusOr<HeldExpert> WorkerCache::Get(ExpertKey key) { return held_.Get(key, &report_); }

void WorkerCache::Drop(ExpertKey key) { held_.Drop(key); }

absl::StatusOr<v1::CacheInfo> WorkerCache::StateHeld() {
  v1::SyncCacheRequest request;
  request.set_model(options_.model);
  request.set_cache(options_.cache);
  for (const ExpertKey& key : held_.Keys()) {
    v1::ExpertRef* ref = request.add_resident();
    ref->set_layer(key.layer);
    ref->set_expert(key.expert);
  }
  return client_->SyncCache(request);
}

absl::Status WorkerCache::Resync() {
  return Reliably([&] { return StateHeld(); }).status();
}

absl::Status WorkerCache::Close() { return client_->CloseCache(options_.model, options_.cache); }

std::vector<ExpertKey> WorkerCache::Held() const { return held_.Keys(); }

}  // namespace moe_router
