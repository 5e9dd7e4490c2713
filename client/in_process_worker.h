#ifndef MOE_ROUTER_CLIENT_IN_PROCESS_WORKER_H_
#define MOE_ROUTER_CLIENT_IN_PROCESS_WORKER_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/worker/worker_engine.h"
#include "moe_router/v1/moe_router.grpc.pb.h"

namespace moe_router {

/// What the control stream did, for logs, metrics and the CLI.
struct ControlStats {
  bool connected = false;
  /// The service was unreachable at start: routing began with local
  /// settings and no learned state.
  bool started_without_service = false;
  uint64_t connects = 0;  // streams opened, the first included
  uint64_t reports_sent = 0;
  uint64_t reports_dropped = 0;  // oldest unacknowledged, past the bound
  uint64_t updates_received = 0;
  uint64_t bytes_up = 0;  // serialized messages
  uint64_t bytes_down = 0;
  uint64_t acknowledged = 0;  // the last report the service folded in
  // Streams given up because the service stopped answering on them (a
  // stalled replica: no acknowledgement within ack_timeout, or no first
  // update within connect_timeout).
  uint64_t stalls = 0;
};

/// An inference worker that routes in its own process: a WorkerEngine (the
/// data plane, see core/worker_engine.h) and the control stream (Learn) that
/// reports what it routed to the service and brings back what the fleet
/// learned. The stream runs on its own threads: Route() never waits on the
/// network, whether the service is slow, gone or restarting. On a broken
/// stream it keeps routing with the last state it had, reconnects with
/// backoff, states what it holds (as SyncCache) and resends what the
/// service had not acknowledged. While no stream is open, what it routes
/// gathers in the engine's next report, whose size the model's shape bounds:
/// nothing is lost. Reports written but not yet acknowledged (a stalled
/// service) are kept for resending up to max_pending_reports; past that the
/// oldest are dropped and counted, and are lost if the stream then breaks.
/// A service that stops answering without breaking the stream (a stalled
/// replica behind a proxy) is given up after ack_timeout and the stream
/// reopened, where the proxy now sends it.
///
///   auto worker = InProcessWorker::Start(channel, {.model = "mixtral-8x7b",
///                                                  .cache = "pod-7/gpu0",
///                                                  .budget_bytes = 8 << 30});
///   WorkerStep step;
///   (*worker)->engine().Route(layer, logits, &step);  // then drop, load, compute
class InProcessWorker {
 public:
  struct Options {
    std::string model;
    std::string cache;  // stable across restarts of this worker
    uint64_t budget_bytes = 0;
    std::string eviction_policy = {};  // empty: the model's
    /// How often what was routed is reported.
    absl::Duration report_interval = absl::Milliseconds(100);
    /// How long Start waits for the service before routing on its own.
    absl::Duration connect_timeout = absl::Seconds(2);
    absl::Duration max_backoff = absl::Seconds(5);
    /// A report written but not acknowledged by then means the service
    /// stalled: the stream is given up and reopened. The service folds a
    /// report in milliseconds; 2 s is 20 report intervals.
    absl::Duration ack_timeout = absl::Seconds(2);
    uint32_t max_pending_reports = 64;
    /// To route with when the service is unreachable at start: the model's
    /// config and expert sizes (e.g. from a local checkpoint). Without them
    /// an unreachable service is an error.
    std::optional<ModelConfig> local_model = std::nullopt;
    std::shared_ptr<const ExpertSizeTable> local_sizes = nullptr;
  };

  static absl::StatusOr<std::unique_ptr<InProcessWorker>> Start(
      std::shared_ptr<grpc::Channel> channel, const Options& options);
  /// Sends a last report (when connected) and stops the stream.
  ~InProcessWorker();

  WorkerEngine& engine() { return *engine_; }
  ControlStats control_stats() const;
  /// Takes a report now and waits until the service acknowledged it, or
  /// `timeout`; whether it was. For tests and orderly hand-offs.
  bool Flush(absl::Duration timeout);

 private:
  struct Pending {
    uint64_t sequence = 0;
    v1::WorkerReport message;
    absl::Time written_at = absl::InfinitePast();  // on the current stream
  };
  // One open stream.
  struct Stream {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerReport, v1::FleetUpdate>> rw;
    std::thread reader;
    std::thread watchdog;
    std::atomic<bool> broken{false};
    std::atomic<bool> handshake_done{false};
    absl::Time handshake_deadline;
  };

  InProcessWorker(std::shared_ptr<grpc::Channel> channel, Options options);
  // Opens a stream: hello (with the residency as of a report taken now),
  // the first update, then every pending report. With no engine yet, the
  // first update builds it.
  absl::Status Connect(absl::Time deadline);
  void Disconnect();
  absl::StatusOr<std::unique_ptr<WorkerEngine>> EngineFromUpdate(
      const v1::FleetUpdate& first) const;
  WorkerEngineOptions EngineOptions() const;
  void Run();
  void ReadUpdates(Stream* stream);
  // Cancels `stream` when the service stops answering on it: no first
  // update by its handshake deadline, or a written report unacknowledged
  // past ack_timeout. A stalled peer never breaks the stream itself.
  void Watch(Stream* stream);
  void Apply(const v1::FleetUpdate& update);
  // Takes the engine's report into the pending queue (oldest dropped past
  // the bound); with `residency`, also what the worker holds, in one step.
  void QueueReport(std::vector<std::pair<ExpertKey, uint8_t>>* residency);
  bool WritePending();

  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::MoeRouter::Stub> stub_;
  const Options options_;
  // This run of the worker, in every hello: the service folds each report
  // of it once, however often a broken stream makes it resend.
  const uint64_t worker_id_;
  std::unique_ptr<WorkerEngine> engine_;
  std::unique_ptr<Stream> stream_;  // the control thread's
  std::thread control_;
  RoutingReport scratch_;  // the control thread's

  mutable absl::Mutex mu_;
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;  // the last sequence written on this stream
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool flush_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_stream_ ABSL_GUARDED_BY(mu_) = false;  // stops the watchdog
  ControlStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CLIENT_IN_PROCESS_WORKER_H_
