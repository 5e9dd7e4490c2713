#include "server/service.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "proto/grpc_status.h"

namespace moe_router {
namespace {

// Runs `body` unless the caller already gave up, and finishes the call.
template <typename Body>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, Body body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (context->IsCancelled()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller"));
  } else {
    reactor->Finish(ToGrpcStatus(body()));
  }
  return reactor;
}

void AddRef(const ExpertKey& key, google::protobuf::RepeatedPtrField<v1::ExpertRef>* out) {
  v1::ExpertRef* ref = out->Add();
  ref->set_layer(key.layer);
  ref->set_expert(key.expert);
}

}  // namespace

absl::Status MoeRouterService::Route(const v1::RouteTokensRequest& request,
                                     v1::RouteTokensResponse* response) {
  auto model = registry_->Find(request.model());
  if (!model.ok()) {
    registry_->unknown_route_requests()[static_cast<int>(model.status().code())].fetch_add(
        1, std::memory_order_relaxed);
    return model.status();
  }
  absl::Status status = RouteModel(**model, request, response);
  (*model)->route_requests[static_cast<int>(status.code())].fetch_add(1, std::memory_order_relaxed);
  return status;
}

absl::Status MoeRouterService::RouteModel(const HostedModel& model,
                                          const v1::RouteTokensRequest& request,
                                          v1::RouteTokensResponse* response) {
  ModelEngine& engine = *model.engine;
  const uint32_t experts = engine.config().router.num_experts;
  const uint64_t tokens = request.gate_logits_size() / experts;
  if (tokens > limits_.max_tokens_per_request) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%d tokens in one request, over the limit of %d", tokens,
        limits_.max_tokens_per_request));
  }
  auto routed = engine.Route(request.layer(), request.gate_logits());
  if (!routed.ok()) return routed.status();
  const RouteBatch& batch = routed->batch;
  response->mutable_experts()->Add(batch.experts.begin(), batch.experts.end());
  response->mutable_weights()->Add(batch.weights.begin(), batch.weights.end());
  for (uint8_t r : batch.resident) response->add_resident(r != 0);
  for (const ExpertKey& key : routed->urgent) AddRef(key, response->mutable_urgent_page_ins());
  for (const ExpertKey& key : routed->prefetch) AddRef(key, response->mutable_prefetches());
  response->set_tokens(batch.tokens);
  response->set_changed_tokens(batch.changed_tokens);
  response->set_gate_mass_retained(batch.tokens ? batch.gate_mass_sum / batch.tokens : 1.0);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* MoeRouterService::RouteTokens(grpc::CallbackServerContext* context,
                                                        const v1::RouteTokensRequest* request,
                                                        v1::RouteTokensResponse* response) {
  return Unary(context, [&] { return Route(*request, response); });
}

grpc::ServerUnaryReactor* MoeRouterService::Prefetch(grpc::CallbackServerContext* context,
                                                     const v1::PrefetchRequest* request,
                                                     v1::PrefetchResponse* response) {
  return Unary(context, [&]() -> absl::Status {
    auto model = registry_->Find(request->model());
    if (!model.ok()) return model.status();
    auto outcome = (*model)->engine->Prefetch(request->layer(), request->experts(),
                                              request->budget());
    if (!outcome.ok()) return outcome.status();
    response->mutable_queued()->Add(outcome->queued.begin(), outcome->queued.end());
    response->mutable_already_resident()->Add(outcome->already_resident.begin(),
                                              outcome->already_resident.end());
    response->mutable_dropped()->Add(outcome->dropped.begin(), outcome->dropped.end());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* MoeRouterService::RegisterModel(grpc::CallbackServerContext* context,
                                                          const v1::RegisterModelRequest* request,
                                                          v1::ModelInfo* response) {
  return Unary(context, [&]() -> absl::Status {
    auto created = registry_->Register(request->spec());
    if (!created.ok()) return created.status();
    auto model = registry_->Find(request->spec().name());
    if (!model.ok()) return model.status();
    *response->mutable_spec() = (*model)->spec;
    response->set_store((*model)->engine->store().Describe());
    response->set_created(*created);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* MoeRouterService::UnregisterModel(
    grpc::CallbackServerContext* context, const v1::UnregisterModelRequest* request,
    v1::UnregisterModelResponse*) {
  return Unary(context, [&] {
    return request->model().empty()
               ? absl::InvalidArgumentError("model name must not be empty")
               : registry_->Unregister(request->model());
  });
}

grpc::ServerUnaryReactor* MoeRouterService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest*,
                                                       v1::ListModelsResponse* response) {
  return Unary(context, [&] {
    for (const auto& model : registry_->List()) {
      v1::ModelInfo* info = response->add_models();
      *info->mutable_spec() = model->spec;
      info->set_store(model->engine->store().Describe());
    }
    return absl::OkStatus();
  });
}

absl::Status MoeRouterService::Stats(const std::string& name, v1::ModelStats* out) {
  auto model = registry_->Find(name);
  if (!model.ok()) return model.status();
  const ModelStats s = (*model)->engine->Stats();
  const MetricsSnapshot& m = s.metrics;
  out->set_model(s.name);
  out->set_hit_rate(m.total.HitRate());
  out->set_routed_tokens(m.total.routed_tokens);
  out->set_changed_tokens(m.total.changed_tokens);
  out->set_gate_mass_retained_mean(m.gate_mass.Mean());
  out->set_gate_mass_retained_min(m.gate_mass_min);
  out->set_page_ins_urgent(m.total.page_ins[0]);
  out->set_page_ins_normal(m.total.page_ins[1]);
  out->set_page_ins_prefetch(m.total.page_ins[2]);
  out->set_paged_bytes(m.total.paged_bytes);
  out->set_page_in_seconds_mean(m.page_in_seconds.Mean());
  out->set_page_in_seconds_max(m.page_in_seconds.max);
  out->set_prefetch_loaded(s.cache.prefetch_loaded);
  out->set_prefetch_used(s.cache.prefetch_used);
  out->set_checksum_failures(m.checksum_failures);
  out->set_evictions(s.cache.evictions);
  out->set_resident_bytes(s.cache.resident_bytes);
  out->set_budget_bytes(s.cache.budget_bytes);
  for (const auto& [precision, count] : s.resident_by_precision) {
    (*out->mutable_resident_by_precision())[precision] = count;
  }
  out->set_resident_hot(s.resident_by_class[0]);
  out->set_resident_warm(s.resident_by_class[1]);
  out->set_resident_cold(s.resident_by_class[2]);
  out->set_route_seconds_per_token(m.targets.route_us_per_token * 1e-6);
  out->set_meets_targets(m.targets.ok());
  out->set_targets_summary(m.targets.ToString());
  for (uint32_t l = 0; l < m.layers.size(); ++l) {
    const LayerTotals& t = m.layers[l];
    v1::LayerStats* layer = out->add_layers();
    layer->set_layer(l);
    layer->set_routed_tokens(t.routed_tokens);
    layer->set_hits(t.hits);
    layer->set_misses(t.misses);
    layer->set_hit_rate(t.HitRate());
    layer->set_resident_experts(s.layers[l].resident_experts);
    layer->set_page_ins(t.PageIns());
    layer->set_page_outs(t.page_outs);
    layer->set_paged_bytes(t.paged_bytes);
    layer->set_coactivation_top1(s.layers[l].coactivation_top1);
    layer->set_coactivation_top2(s.layers[l].coactivation_top2);
  }
  return absl::OkStatus();
}

// One response per request, in order: read, route, write, read again. An
// error ends the stream with that status (the requests before it were
// answered).
class RouteStreamReactor final
    : public grpc::ServerBidiReactor<v1::RouteTokensRequest, v1::RouteTokensResponse> {
 public:
  explicit RouteStreamReactor(MoeRouterService* service) : service_(service) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client finished sending
      Finish(grpc::Status::OK);
      return;
    }
    response_.Clear();
    if (absl::Status s = service_->Route(request_, &response_); !s.ok()) {
      Finish(ToGrpcStatus(s));
      return;
    }
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the client went away"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  MoeRouterService* const service_;
  v1::RouteTokensRequest request_;
  v1::RouteTokensResponse response_;
};

grpc::ServerBidiReactor<v1::RouteTokensRequest, v1::RouteTokensResponse>*
MoeRouterService::RouteStream(grpc::CallbackServerContext*) {
  return new RouteStreamReactor(this);
}

// Streams one expert: the fetch completes on a paging worker (never
// blocking a callback thread), then a header chunk and data chunks follow,
// the expert pinned until the last is written. The reactor stays alive until
// the fetch callback has run, even if the client cancels, so the callback
// never sees a deleted reactor.
class FetchExpertReactor final : public grpc::ServerWriteReactor<v1::ExpertChunk> {
 public:
  FetchExpertReactor(std::shared_ptr<const HostedModel> model, ExpertKey key)
      : model_(std::move(model)) {
    model_->engine->FetchAsync(key, [this](absl::StatusOr<PinnedExpert> expert) {
      if (!expert.ok()) return Finish(ToGrpcStatus(expert.status()));
      {
        absl::MutexLock lock(&mu_);
        if (cancelled_) {
          return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller"));
        }
        expert_ = *std::move(expert);
      }
      WriteNext();
    });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the client went away"));
    WriteNext();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }

  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    const ExpertData& e = *expert_;
    if (header_sent_ && offset_ >= e.size) return Finish(grpc::Status::OK);
    chunk_.Clear();
    if (!header_sent_) {
      header_sent_ = true;
      for (const TensorData& t : e.tensors) {
        v1::TensorHeader* header = chunk_.add_tensors();
        header->set_name(t.name);
        header->set_dtype(t.dtype);
        header->mutable_shape()->Add(t.shape.begin(), t.shape.end());
        header->set_size_bytes(t.size);
        header->set_xxh3(t.checksum);
      }
      chunk_.set_precision(e.precision);
      chunk_.set_total_bytes(e.size);
      chunk_.set_expert_xxh3(e.checksum);
    }
    const uint64_t n = std::min(kExpertChunkBytes, e.size - offset_);
    chunk_.set_offset(offset_);
    chunk_.set_data(e.bytes.get() + offset_, n);
    offset_ += n;
    StartWrite(&chunk_);
  }

  const std::shared_ptr<const HostedModel> model_;  // keeps the engine alive
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  PinnedExpert expert_;
  bool header_sent_ = false;
  uint64_t offset_ = 0;
  v1::ExpertChunk chunk_;
};

grpc::ServerWriteReactor<v1::ExpertChunk>* MoeRouterService::FetchExpert(
    grpc::CallbackServerContext*, const v1::FetchExpertRequest* request) {
  auto model = registry_->Find(request->model());
  if (!model.ok()) {
    // A reactor that only reports the error.
    class Failed final : public grpc::ServerWriteReactor<v1::ExpertChunk> {
     public:
      explicit Failed(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Failed(model.status());
  }
  return new FetchExpertReactor(*std::move(model), {request->layer(), request->expert()});
}

grpc::ServerUnaryReactor* MoeRouterService::GetModelStats(grpc::CallbackServerContext* context,
                                                          const v1::GetModelStatsRequest* request,
                                                          v1::ModelStats* response) {
  return Unary(context, [&] { return Stats(request->model(), response); });
}

}  // namespace moe_router
