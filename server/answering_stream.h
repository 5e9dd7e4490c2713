#ifndef MOE_ROUTER_SERVER_ANSWERING_STREAM_H_
#define MOE_ROUTER_SERVER_ANSWERING_STREAM_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "proto/grpc_status.h"
#include "server/call_gate.h"

namespace moe_router {

/// A bidi stream on the callback API that answers each request with one
/// response, in order: read, Answer(), write, read the next. An error from
/// Answer() ends the stream with that status (the requests before it were
/// answered). A drain ends it at the next boundary: a request being answered
/// is answered first, then the stream finishes with DrainingStatus(), which
/// tells the client to open a new one (through a proxy, on another replica).
///
/// The gate (null for the benchmarks' null service) counts the stream and
/// deletes it when done; derived classes call Start() at the end of their
/// constructor.
template <typename Request, typename Response>
class AnsweringStream : public grpc::ServerBidiReactor<Request, Response>, public DrainableStream {
 public:
  void OnReadDone(bool ok) final {
    if (!ok) return FinishOnce(grpc::Status::OK);  // the client finished sending
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      answering_ = true;
    }
    response_.Clear();
    if (absl::Status s = Answer(request_, &response_); !s.ok()) return FinishOnce(ToGrpcStatus(s));
    this->StartWrite(&response_);
  }

  void OnWriteDone(bool ok) final {
    if (!ok) return FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the client went away"));
    bool end;
    {
      absl::MutexLock lock(&mu_);
      answering_ = false;
      end = ending_;
    }
    if (end) return FinishOnce(DrainingStatus());
    this->StartRead(&request_);
  }

  void OnDone() final {
    if (gate_ == nullptr) {
      delete this;
    } else {
      gate_->Leave(this);
    }
  }

  void EndForDrain() final {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      if (answering_) {
        ending_ = true;
        return;
      }
    }
    // Waiting for a request: a request in flight was not read, so nothing
    // of it was done; the client sends it again on its next stream.
    FinishOnce(DrainingStatus());
  }

 protected:
  explicit AnsweringStream(CallGate* gate) : gate_(gate) {}

  /// Starts reading, or refuses the stream if a drain began.
  void Start() {
    if (gate_ != nullptr && !gate_->Enter(this)) {
      gate_ = nullptr;  // not admitted: deletes itself
      return FinishOnce(DrainingStatus());
    }
    this->StartRead(&request_);
  }

  virtual absl::Status Answer(const Request& request, Response* response) = 0;

 private:
  void FinishOnce(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    this->Finish(status);
  }

  CallGate* gate_;
  absl::Mutex mu_;
  bool answering_ ABSL_GUARDED_BY(mu_) = false;  // from a read until its answer is written
  bool ending_ ABSL_GUARDED_BY(mu_) = false;     // finish once the answer is written
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  Request request_;
  Response response_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_ANSWERING_STREAM_H_
