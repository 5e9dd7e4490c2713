#ifndef MOE_ROUTER_SERVER_LEARN_REACTOR_H_
#define MOE_ROUTER_SERVER_LEARN_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/model/learned_state.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "server/answering_stream.h"
#include "server/model_registry.h"

namespace moe_router {

struct LearnStreamOptions {
  /// Fleet state goes down at most this often per worker.
  absl::Duration min_push_interval = absl::Milliseconds(100);
  /// Bytes of layer state per update, after the first (which has all
  /// layers): 64 KiB every 100 ms is at most 640 KiB/s per worker.
  uint64_t max_update_bytes = 64 << 10;
  /// Successors per co-activation row.
  uint32_t successors_per_row = kDefaultSuccessorsPerRow;
};

/// One Learn call: the hello opens (or finds) the worker's cache and adopts
/// what it holds; the first update carries the model, its expert sizes and
/// every layer's state. Then per report: fold it, answer with the
/// acknowledgement and the layers whose state moved, a few at a time in
/// turn. One read or write at a time, so the worker's reports are folded in
/// order. An error ends the stream with that status; a drain ends it
/// between reports (the worker resends what was not acknowledged).
class LearnReactor final : public AnsweringStream<v1::WorkerReport, v1::FleetUpdate> {
 public:
  LearnReactor(CallGate* gate, const ModelRegistry* registry, LearnStreamOptions options);

 private:
  absl::Status Answer(const v1::WorkerReport& report, v1::FleetUpdate* update) override;
  absl::Status Hello(const v1::WorkerHello& hello, v1::FleetUpdate* update);
  absl::Status Fold(const v1::WorkerReport& report, v1::FleetUpdate* update);
  // Adds the layers whose state moved since they were last sent, from the
  // cursor on, up to `max_bytes` (at least one).
  void AddChangedLayers(uint64_t max_bytes, v1::FleetUpdate* update);

  const ModelRegistry* const registry_;
  const LearnStreamOptions options_;
  std::shared_ptr<const HostedModel> model_;
  std::string cache_;
  uint64_t acknowledged_ = 0;
  uint64_t worker_id_ = 0;             // from the hello
  std::vector<uint64_t> sent_tokens_;  // per layer, as of its last push
  uint32_t cursor_ = 0;
  absl::Time last_push_ = absl::InfinitePast();
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_LEARN_REACTOR_H_
