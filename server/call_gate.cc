#include "server/call_gate.h"

namespace moe_router {

grpc::Status DrainingStatus() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "moe-routerd is draining: send the call again, or open the stream "
                      "again (through a proxy it reaches another replica)");
}

bool CallGate::Enter() {
  if (draining_.load()) return false;
  in_flight_.fetch_add(1);
  if (draining_.load()) {
    Leave();
    return false;
  }
  return true;
}

void CallGate::Leave() {
  if (in_flight_.fetch_sub(1) == 1 && draining_.load()) {
    // The drain awaits the count under mu_: releasing it wakes the drain.
    absl::MutexLock lock(&mu_);
  }
}

bool CallGate::Enter(DrainableStream* stream) {
  if (!Enter()) return false;
  absl::MutexLock lock(&mu_);
  streams_.insert(stream);
  return true;
}

void CallGate::Leave(DrainableStream* stream) {
  bool delete_now;
  {
    absl::MutexLock lock(&mu_);
    streams_.erase(stream);
    delete_now = !ending_streams_;
    if (!delete_now) done_while_ending_.push_back(stream);
  }
  if (delete_now) delete stream;
  Leave();
}

void CallGate::BeginDrain() {
  draining_.store(true);
  std::vector<DrainableStream*> open;
  {
    absl::MutexLock lock(&mu_);
    open.assign(streams_.begin(), streams_.end());
    ending_streams_ = true;
  }
  for (DrainableStream* stream : open) stream->EndForDrain();
  std::vector<DrainableStream*> done;
  {
    absl::MutexLock lock(&mu_);
    ending_streams_ = false;
    done.swap(done_while_ending_);
  }
  for (DrainableStream* stream : done) delete stream;
}

bool CallGate::AwaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this] { return in_flight_.load() == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

}  // namespace moe_router
