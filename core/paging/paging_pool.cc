#include "core/paging/paging_pool.h"

#include <chrono>

#include "absl/strings/str_format.h"

namespace moe_router {

void PageTicket::Complete(absl::Status status) {
  std::vector<std::function<void(const absl::Status&)>> callbacks;
  {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
    done_.Notify();
    callbacks.swap(callbacks_);
  }
  for (auto& callback : callbacks) callback(status_);
}

void PageTicket::OnDone(std::function<void(const absl::Status&)> callback) const {
  {
    absl::MutexLock lock(&mu_);
    if (!done_.HasBeenNotified()) {
      callbacks_.push_back(std::move(callback));
      return;
    }
  }
  callback(status_);
}

absl::StatusOr<std::unique_ptr<PagingPool>> PagingPool::Create(
    ExpertCache* cache, std::shared_ptr<const ExpertStore> store, PrecisionFn precision,
    ModelMetrics* metrics, const PagingPoolOptions& options) {
  if (cache == nullptr || store == nullptr || !precision) {
    return absl::InvalidArgumentError("paging pool needs a cache, a store and a precision map");
  }
  if (options.threads == 0 || options.threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrFormat("paging.threads must be in [1, 256], got %d", options.threads));
  }
  auto pool = std::unique_ptr<PagingPool>(
      new PagingPool(cache, std::move(store), std::move(precision), metrics));
  for (uint32_t i = 0; i < options.threads; ++i) {
    pool->workers_.emplace_back([p = pool.get()] { p->WorkerLoop(); });
  }
  return pool;
}

PagingPool::PagingPool(ExpertCache* cache, std::shared_ptr<const ExpertStore> store,
                       PrecisionFn precision, ModelMetrics* metrics)
    : cache_(cache),
      store_(std::move(store)),
      precision_(std::move(precision)),
      metrics_(metrics) {}

PagingPool::~PagingPool() { Shutdown(); }

void PagingPool::PushLocked(const std::shared_ptr<Request>& request) {
  queues_[static_cast<int>(request->priority)].push_back(request);
  ++depth_[static_cast<int>(request->priority)];
}

std::shared_ptr<const PageTicket> PagingPool::Enqueue(Kind kind, ExpertKey key, Priority priority) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    auto ticket = std::make_shared<PageTicket>();
    ticket->Complete(absl::UnavailableError("paging pool is shutting down"));
    return ticket;
  }
  if (kind == Kind::kPageIn) {
    if (const auto it = page_ins_.find(key); it != page_ins_.end()) {
      Request& joined = *it->second;
      if (!joined.running && priority < joined.priority) {
        --depth_[static_cast<int>(joined.priority)];
        joined.priority = priority;
        PushLocked(it->second);
      }
      return joined.ticket;
    }
  }
  auto request = std::make_shared<Request>(Request{.kind = kind, .key = key, .priority = priority});
  if (kind == Kind::kPageIn) page_ins_[key] = request;
  PushLocked(request);
  return request->ticket;
}

std::shared_ptr<const PageTicket> PagingPool::PageIn(ExpertKey key, Priority priority) {
  if (cache_->IsResident(key)) {
    auto ticket = std::make_shared<PageTicket>();
    ticket->Complete(absl::OkStatus());
    return ticket;
  }
  return Enqueue(Kind::kPageIn, key, priority);
}

std::shared_ptr<const PageTicket> PagingPool::PageOut(ExpertKey key) {
  return Enqueue(Kind::kPageOut, key, Priority::kNormal);
}

std::shared_ptr<const PageTicket> PagingPool::Repage(ExpertKey key) {
  return Enqueue(Kind::kRepage, key, Priority::kPrefetch);
}

bool PagingPool::CancelPrefetch(ExpertKey key) {
  std::shared_ptr<Request> request;
  {
    absl::MutexLock lock(&mu_);
    const auto it = page_ins_.find(key);
    if (it == page_ins_.end() || it->second->running ||
        it->second->priority != Priority::kPrefetch) {
      return false;
    }
    request = it->second;
    request->finished = true;
    --depth_[static_cast<int>(Priority::kPrefetch)];
    page_ins_.erase(it);
  }
  request->ticket->Complete(
      absl::CancelledError(absl::StrFormat("prefetch of %s was cancelled", key.ToString())));
  return true;
}

uint64_t PagingPool::QueueDepth(Priority priority) const {
  absl::MutexLock lock(&mu_);
  return depth_[static_cast<int>(priority)];
}

bool PagingPool::WaitIdle(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return running_ == 0 && depth_[0] == 0 && depth_[1] == 0 && depth_[2] == 0;
  };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

void PagingPool::Shutdown() {
  std::vector<std::shared_ptr<Request>> cancelled;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    for (auto& queue : queues_) {
      for (auto& request : queue) {
        if (!request->running && !request->finished) {
          request->finished = true;
          cancelled.push_back(request);
        }
      }
      queue.clear();
    }
    for (uint64_t& d : depth_) d = 0;
    page_ins_.clear();
  }
  for (auto& request : cancelled) {
    request->ticket->Complete(absl::CancelledError("paging pool shut down"));
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void PagingPool::WorkerLoop() {
  while (true) {
    std::shared_ptr<Request> request;
    {
      absl::MutexLock lock(&mu_);
      const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        if (stopping_) return true;
        for (const auto& q : queues_) {
          if (!q.empty()) return true;
        }
        return false;
      };
      while (request == nullptr) {
        mu_.Await(absl::Condition(&ready));
        if (stopping_) return;
        for (int p = 0; p < kNumPriorities && request == nullptr; ++p) {
          while (!queues_[p].empty()) {
            std::shared_ptr<Request> r = std::move(queues_[p].front());
            queues_[p].pop_front();
            // Stale entry: raised to another queue, cancelled, or taken.
            if (r->finished || r->running || static_cast<int>(r->priority) != p) continue;
            --depth_[p];
            ++running_;
            r->running = true;
            request = std::move(r);
            break;
          }
        }
      }
    }
    absl::Status status = Execute(*request);
    {
      absl::MutexLock lock(&mu_);
      request->finished = true;
      --running_;
      if (request->kind == Kind::kPageIn) {
        const auto it = page_ins_.find(request->key);
        if (it != page_ins_.end() && it->second == request) page_ins_.erase(it);
      }
    }
    request->ticket->Complete(std::move(status));
  }
}

absl::Status PagingPool::Execute(const Request& request) {
  switch (request.kind) {
    case Kind::kPageIn:
      return ExecutePageIn(request.key, request.priority);
    case Kind::kPageOut:
      return cache_->Evict(request.key);
    case Kind::kRepage:
      return ExecuteRepage(request.key);
  }
  return absl::InternalError("unknown paging request");
}

absl::Status PagingPool::ExecutePageIn(ExpertKey key, Priority priority) {
  if (cache_->IsResident(key)) return absl::OkStatus();
  const std::string precision = precision_(key);
  absl::StatusOr<ExpertInfo> info = store_->Info(key, precision);
  if (!info.ok()) return info.status();
  if (absl::Status s = cache_->Reserve(key, info->bytes, priority); !s.ok()) {
    if (absl::IsAlreadyExists(s)) return absl::OkStatus();
    if (metrics_ != nullptr && priority == Priority::kPrefetch) {
      metrics_->RecordPrefetch(key, /*dropped=*/true);
    }
    return s;
  }
  return LoadAndCommit(key, precision, priority);
}

absl::Status PagingPool::ExecuteRepage(ExpertKey key) {
  const std::string current = cache_->ResidentPrecision(key);
  const std::string wanted = precision_(key);
  if (current.empty() || current == wanted) return absl::OkStatus();
  absl::StatusOr<ExpertInfo> info = store_->Info(key, wanted);
  if (!info.ok()) return info.status();
  if (absl::Status s = cache_->ReserveReplacement(key, info->bytes); !s.ok()) return s;
  if (metrics_ != nullptr) metrics_->RecordRepage(key);
  return LoadAndCommit(key, wanted, Priority::kPrefetch);
}

absl::Status PagingPool::LoadAndCommit(ExpertKey key, const std::string& precision,
                                       Priority priority) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::shared_ptr<const ExpertData>> data = store_->Load(key, precision);
  absl::Status status = data.status();
  const uint64_t bytes = data.ok() ? (*data)->size : 0;
  if (status.ok()) status = cache_->Commit(*std::move(data));
  if (!status.ok()) {
    cache_->Abort(key);
    if (metrics_ != nullptr) metrics_->RecordPageInFailure(key, status);
    return status;
  }
  if (metrics_ != nullptr) {
    metrics_->RecordPageIn(
        key, priority, bytes,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return absl::OkStatus();
}

}  // namespace moe_router
