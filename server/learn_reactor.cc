#include "server/learn_reactor.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "proto/control_stream_proto.h"
#include "proto/grpc_status.h"
#include "server/core_to_proto.h"

namespace moe_router {

LearnReactor::LearnReactor(CallGate* gate, const ModelRegistry* registry,
                           LearnStreamOptions options)
    : AnsweringStream(gate), registry_(registry), options_(options) {
  Start();
}

absl::Status LearnReactor::Answer(const v1::WorkerReport& report, v1::FleetUpdate* update) {
  return model_ == nullptr ? Hello(report.hello(), update) : Fold(report, update);
}

absl::Status LearnReactor::Hello(const v1::WorkerHello& hello, v1::FleetUpdate* update) {
  if (hello.model().empty()) {
    return absl::InvalidArgumentError(
        "the first message of a Learn stream must carry hello with the model and cache");
  }
  auto model = registry_->Find(hello.model());
  if (!model.ok()) return model.status();
  ModelEngine& engine = *(*model)->engine;
  auto opened = engine.OpenCache(hello.cache(), hello.budget_bytes(), hello.eviction_policy());
  if (!opened.ok()) return opened.status();
  std::vector<ExpertKey> resident;
  resident.reserve(hello.resident_size());
  for (const v1::ExpertRef& ref : hello.resident()) resident.push_back({ref.layer(), ref.expert()});
  auto synced = engine.SyncCache(hello.cache(), resident);
  if (!synced.ok()) return synced.status();
  model_ = *std::move(model);
  cache_ = hello.cache();
  worker_id_ = hello.worker_id();
  // Reports folded on an earlier stream whose acknowledgement was lost
  // count as acknowledged: the worker drops them instead of resending.
  acknowledged_ = std::max(hello.first_sequence() > 0 ? hello.first_sequence() - 1 : 0,
                           engine.LastFolded(hello.cache(), worker_id_));
  sent_tokens_.assign(engine.config().num_layers, 0);
  *update->mutable_spec() = model_->worker_spec;
  ToProto(*engine.sizes(), update);
  ToProto(model_->spec.name(), *synced, update->mutable_cache());
  update->set_acknowledged(acknowledged_);
  AddChangedLayers(~uint64_t{0}, update);
  return absl::OkStatus();
}

absl::Status LearnReactor::Fold(const v1::WorkerReport& report, v1::FleetUpdate* update) {
  ModelEngine& engine = *model_->engine;
  const ModelConfig& config = engine.config();
  auto parsed = ReportFromProto(report, config.num_layers, config.router.num_experts);
  if (!parsed.ok()) return parsed.status();
  if (absl::Status s = engine.FoldReport(cache_, *parsed, worker_id_); !s.ok()) return s;
  acknowledged_ = std::max(acknowledged_, report.sequence());
  update->set_acknowledged(acknowledged_);
  const absl::Time now = absl::Now();
  if (now - last_push_ >= options_.min_push_interval)
    AddChangedLayers(options_.max_update_bytes, update);
  return absl::OkStatus();
}

void LearnReactor::AddChangedLayers(uint64_t max_bytes, v1::FleetUpdate* update) {
  const ModelEngine& engine = *model_->engine;
  const uint32_t layers = engine.config().num_layers;
  uint64_t bytes = 0;
  // In turn from where the last update stopped; the cursor moves past each
  // layer sent, but the turn is counted from where it began, so every layer
  // is visited once.
  const uint32_t start = cursor_;
  for (uint32_t i = 0; i < layers && bytes < max_bytes; ++i) {
    const uint32_t l = (start + i) % layers;
    const uint64_t tokens = engine.LayerTokens(l);
    if (tokens == sent_tokens_[l]) continue;
    v1::LayerLearnedState* state = update->add_layers();
    ToProto(engine.ExportLayerState(l, options_.successors_per_row), state);
    bytes += state->ByteSizeLong();
    sent_tokens_[l] = tokens;
    cursor_ = (l + 1) % layers;
  }
  if (update->layers_size() > 0) last_push_ = absl::Now();
}

}  // namespace moe_router
