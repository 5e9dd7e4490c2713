#include "client/in_process_worker.h"

#include <algorithm>
#include <iostream>
#include <random>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "proto/control_stream_proto.h"
#include "proto/grpc_status.h"
#include "proto/proto_to_core.h"

namespace moe_router {
namespace {

// Random and non-zero (0 means "not given" to the service).
uint64_t NewWorkerId() {
  std::random_device device;
  uint64_t id = 0;
  while (id == 0) id = (uint64_t{device()} << 32) | device();
  return id;
}

}  // namespace

InProcessWorker::InProcessWorker(std::shared_ptr<grpc::Channel> channel, Options options)
    : channel_(std::move(channel)),
      stub_(v1::MoeRouter::NewStub(channel_)),
      options_(std::move(options)),
      worker_id_(NewWorkerId()) {}

absl::StatusOr<std::unique_ptr<InProcessWorker>> InProcessWorker::Start(
    std::shared_ptr<grpc::Channel> channel, const Options& options) {
  auto worker = std::unique_ptr<InProcessWorker>(new InProcessWorker(std::move(channel), options));
  const absl::Status connected = worker->Connect(absl::Now() + options.connect_timeout);
  if (!connected.ok()) {
    // A refusal by the service (bad cache, unknown model) is final; only
    // an unreachable one is routed around.
    if (!absl::IsUnavailable(connected) && !absl::IsDeadlineExceeded(connected)) return connected;
    if (!options.local_model || options.local_sizes == nullptr) {
      return absl::UnavailableError(absl::StrFormat(
          "the service is unreachable (%s) and no local model config and expert sizes were "
          "given to route with",
          connected.message()));
    }
    auto engine =
        WorkerEngine::Create(*options.local_model, options.local_sizes, worker->EngineOptions());
    if (!engine.ok()) return engine.status();
    worker->engine_ = *std::move(engine);
    std::cerr << "moe-router: service unreachable at start (" << connected.message() << "); cache '"
              << options.cache
              << "' routes with its local settings and no learned state until it connects\n";
    absl::MutexLock lock(&worker->mu_);
    worker->stats_.started_without_service = true;
  }
  worker->control_ = std::thread([w = worker.get()] { w->Run(); });
  return worker;
}

InProcessWorker::~InProcessWorker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (control_.joinable()) control_.join();
  Disconnect();
}

ControlStats InProcessWorker::control_stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::StatusOr<std::unique_ptr<WorkerEngine>> InProcessWorker::EngineFromUpdate(
    const v1::FleetUpdate& first) const {
  auto config = ConfigFromSpec(first.spec());
  if (!config.ok()) return config.status();
  auto sizes = SizesFromProto(first, config->num_layers, config->router.num_experts);
  if (!sizes.ok()) return sizes.status();
  return WorkerEngine::Create(*config, *sizes, EngineOptions());
}

WorkerEngineOptions InProcessWorker::EngineOptions() const {
  return {.cache = options_.cache,
          .budget_bytes = options_.budget_bytes,
          .eviction_policy = options_.eviction_policy,
          .max_unacknowledged_reports = options_.max_pending_reports};
}

absl::Status InProcessWorker::Connect(absl::Time deadline) {
  if (!channel_->WaitForConnected(absl::ToChronoTime(deadline))) {
    return absl::UnavailableError("could not connect to the service");
  }
  stream_ = std::make_unique<Stream>();
  Stream* stream = stream_.get();
  stream->handshake_deadline = deadline;
  AddRoutingHeaders(&stream->context, options_.model, options_.cache);
  stream->rw = stub_->Learn(&stream->context);
  stream->watchdog = std::thread([this, stream] { Watch(stream); });
  v1::WorkerReport hello_message;
  v1::WorkerHello* hello = hello_message.mutable_hello();
  hello->set_model(options_.model);
  hello->set_cache(options_.cache);
  hello->set_budget_bytes(options_.budget_bytes);
  hello->set_eviction_policy(options_.eviction_policy);
  hello->set_worker_id(worker_id_);
  if (engine_ != nullptr) {
    // What the worker holds as of a report taken now: the pending reports
    // before it need not carry their residency changes again.
    std::vector<std::pair<ExpertKey, uint8_t>> residency;
    QueueReport(&residency);
    for (const auto& [key, variant] : residency) {
      v1::ExpertRef* ref = hello->add_resident();
      ref->set_layer(key.layer);
      ref->set_expert(key.expert);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    for (Pending& p : pending_) p.message.set_residency_in_sync(true);
    hello->set_first_sequence(pending_.empty() ? (engine_ ? engine_->last_sequence() + 1 : 1)
                                               : pending_.front().sequence);
    written_ = 0;
  }
  v1::FleetUpdate first;
  if (!stream->rw->Write(hello_message) || !stream->rw->Read(&first)) {
    const absl::Status finished = FromGrpcStatus(stream->rw->Finish());
    Disconnect();
    // Cancelled by the watchdog: the service took the stream and never
    // answered (a stalled replica), as unreachable as one that refuses.
    if (absl::IsCancelled(finished)) {
      return absl::DeadlineExceededError("the service did not answer the stream's hello in time");
    }
    return finished;
  }
  // Answered: from here only acknowledgements are watched.
  stream->handshake_done.store(true);
  if (engine_ == nullptr) {
    auto engine = EngineFromUpdate(first);
    if (!engine.ok()) {
      stream->context.TryCancel();
      stream->rw->Finish().ok();
      Disconnect();
      return engine.status();
    }
    engine_ = *std::move(engine);
  }
  {
    absl::MutexLock lock(&mu_);
    ++stats_.connects;
    stats_.connected = true;
    stats_.bytes_up += hello_message.ByteSizeLong();
  }
  Apply(first);
  stream->reader = std::thread([this, stream] { ReadUpdates(stream); });
  if (!WritePending()) return absl::UnavailableError("the stream broke while resending reports");
  return absl::OkStatus();
}

void InProcessWorker::Disconnect() {
  if (stream_ == nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    closing_stream_ = true;
  }
  stream_->context.TryCancel();
  if (stream_->reader.joinable()) stream_->reader.join();
  if (stream_->watchdog.joinable()) stream_->watchdog.join();
  stream_.reset();
  absl::MutexLock lock(&mu_);
  closing_stream_ = false;
  stats_.connected = false;
}

void InProcessWorker::Watch(Stream* stream) {
  // Checked a few times per ack_timeout.
  const absl::Duration tick = std::min(options_.ack_timeout / 4, absl::Milliseconds(100));
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      const auto closing = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return closing_stream_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&closing), tick)) return;
      const absl::Time now = absl::Now();
      bool stalled;
      if (!stream->handshake_done.load()) {
        stalled = now > stream->handshake_deadline;
      } else {
        // The oldest report written on this stream and not acknowledged.
        stalled = !pending_.empty() && pending_.front().sequence <= written_ &&
                  now - pending_.front().written_at > options_.ack_timeout;
      }
      if (!stalled) continue;
      ++stats_.stalls;
    }
    stream->context.TryCancel();
    return;
  }
}

void InProcessWorker::Apply(const v1::FleetUpdate& update) {
  std::vector<LayerLearnedState> layers;
  layers.reserve(update.layers_size());
  for (const v1::LayerLearnedState& state : update.layers())
    layers.push_back(StateFromProto(state));
  if (!layers.empty()) engine_->Offer(std::move(layers), update.acknowledged());
  absl::MutexLock lock(&mu_);
  ++stats_.updates_received;
  stats_.bytes_down += update.ByteSizeLong();
  stats_.acknowledged = std::max(stats_.acknowledged, update.acknowledged());
  while (!pending_.empty() && pending_.front().sequence <= update.acknowledged()) {
    pending_.pop_front();
  }
}

void InProcessWorker::ReadUpdates(Stream* stream) {
  v1::FleetUpdate update;
  while (stream->rw->Read(&update)) Apply(update);
  stream->broken.store(true, std::memory_order_relaxed);
}

void InProcessWorker::QueueReport(std::vector<std::pair<ExpertKey, uint8_t>>* residency) {
  engine_->TakeReport(&scratch_, residency);
  Pending p;
  p.sequence = scratch_.sequence;
  ToProto(scratch_, &p.message);
  absl::MutexLock lock(&mu_);
  if (pending_.size() >= std::max<uint32_t>(options_.max_pending_reports, 1)) {
    pending_.pop_front();
    ++stats_.reports_dropped;
  }
  pending_.push_back(std::move(p));
}

bool InProcessWorker::WritePending() {
  while (true) {
    v1::WorkerReport next;
    {
      absl::MutexLock lock(&mu_);
      auto it = std::find_if(pending_.begin(), pending_.end(),
                             [&](const Pending& p) { return p.sequence > written_; });
      if (it == pending_.end()) return true;
      next = it->message;
      written_ = it->sequence;
      it->written_at = absl::Now();
      // Counted as it is handed to the stream: its acknowledgement may come
      // back before Write returns.
      ++stats_.reports_sent;
      stats_.bytes_up += next.ByteSizeLong();
    }
    // Outside the lock: a slow service blocks this thread, never Route().
    if (!stream_->rw->Write(next)) return false;
  }
}

void InProcessWorker::Run() {
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    bool stop = false;
    {
      absl::MutexLock lock(&mu_);
      const auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_ || flush_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), options_.report_interval);
      stop = stopping_;
      flush_ = false;
    }
    if (stream_ != nullptr && stream_->broken.load(std::memory_order_relaxed)) Disconnect();
    if (stream_ == nullptr) {
      if (stop) return;
      if (!Connect(absl::Now() + options_.connect_timeout).ok()) {
        Disconnect();
        stream_.reset();
        absl::MutexLock lock(&mu_);
        const auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
        mu_.AwaitWithTimeout(absl::Condition(&stopping), backoff);
        backoff = std::min(backoff * 2, options_.max_backoff);
        continue;
      }
      backoff = absl::Milliseconds(100);
    }
    QueueReport(nullptr);
    if (!WritePending()) Disconnect();
    if (stop) {
      // A last chance for the final report's acknowledgement.
      absl::MutexLock lock(&mu_);
      const uint64_t last = pending_.empty() ? 0 : pending_.back().sequence;
      const auto acked = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stats_.acknowledged >= last || !stats_.connected;
      };
      mu_.AwaitWithTimeout(absl::Condition(&acked), absl::Seconds(1));
      return;
    }
  }
}

bool InProcessWorker::Flush(absl::Duration timeout) {
  const uint64_t target = engine_->last_sequence() + 1;
  absl::MutexLock lock(&mu_);
  flush_ = true;
  const auto acked = [&]()
                         ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stats_.acknowledged >= target; };
  return mu_.AwaitWithTimeout(absl::Condition(&acked), timeout);
}

}  // namespace moe_router
