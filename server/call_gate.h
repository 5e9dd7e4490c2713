#ifndef MOE_ROUTER_SERVER_CALL_GATE_H_
#define MOE_ROUTER_SERVER_CALL_GATE_H_

#include <grpcpp/support/status.h>

#include <atomic>
#include <cstddef>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/grpc_status.h"

namespace moe_router {

/// What a draining replica ends streams and refuses calls with (unary
/// refusals also carry kRefusedTrailer).
grpc::Status DrainingStatus();

/// A call that stays open between messages (RouteStream, Learn): a drain
/// asks it to end at its next message boundary.
class DrainableStream {
 public:
  virtual ~DrainableStream() = default;
  /// Ends the stream once the request being answered (if any) is answered.
  /// Any thread; may run after the stream began finishing on its own.
  virtual void EndForDrain() = 0;
};

/// The service's calls in flight, so a drain completes them before gRPC
/// shuts its transports down. gRPC closes a connection as soon as its last
/// stream ends after the final GOAWAY; a call still streaming then is
/// handed to the kernel and the socket closed behind it, and the client's
/// next window update is answered with a reset that loses what it had not
/// yet read (a 64 MiB fetch ended with a broken pipe after 62 MiB). Calls
/// that end before the GOAWAY are safe: its ping is acknowledged only after
/// the client has read everything sent before it.
///
/// Admission is two atomics, no lock: the routing path shares nothing else.
class CallGate {
 public:
  /// Admits a call, false once a drain began (the caller refuses it with
  /// Refusal()). An admitted call must Leave() exactly once.
  bool Enter();
  void Leave();
  /// The same for a stream, which a drain also asks to end. Leave (from
  /// the stream's OnDone) deletes the stream, later if a drain is asking
  /// streams to end at that moment: ending one may run its OnDone inline.
  bool Enter(DrainableStream* stream);
  void Leave(DrainableStream* stream);

  /// Refuses new calls from now on and asks every open stream to end.
  void BeginDrain();
  /// Waits until no admitted call is left or `deadline`; true if none is.
  bool AwaitIdle(absl::Time deadline);

  size_t in_flight() const { return in_flight_.load(std::memory_order_acquire); }

 private:
  // Both sequentially consistent: a call that enters as the drain begins
  // either sees draining_ and backs out, or is counted before the drain
  // reads the count.
  std::atomic<bool> draining_{false};
  std::atomic<size_t> in_flight_{0};
  absl::Mutex mu_;
  absl::flat_hash_set<DrainableStream*> streams_ ABSL_GUARDED_BY(mu_);
  bool ending_streams_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<DrainableStream*> done_while_ending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_CALL_GATE_H_
