#include "server/service.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "proto/grpc_status.h"
#include "server/core_to_proto.h"
#include "server/learn_reactor.h"
#include "server/route_stream_reactor.h"

namespace moe_router {
namespace {

// Runs `body` unless the caller already gave up, and finishes the call.
template <typename Body>
void FinishUnary(grpc::CallbackServerContext* context, grpc::ServerUnaryReactor* reactor,
                 Body body) {
  if (context->IsCancelled()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller"));
  } else {
    reactor->Finish(ToGrpcStatus(body()));
  }
}

// A unary call admitted by the gate, which it leaves once its answer is
// written.
class GatedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit GatedUnaryReactor(CallGate* gate) : gate_(gate) {}
  void OnDone() override {
    gate_->Leave();
    delete this;
  }

 private:
  CallGate* const gate_;
};

// A call a draining replica takes no more: refused before any of it is
// done, and marked so for the client's retry.
grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context) {
  context->AddTrailingMetadata(kRefusedTrailer, "draining");
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DrainingStatus());
  return reactor;
}

template <typename Body>
grpc::ServerUnaryReactor* Unary(CallGate& gate, grpc::CallbackServerContext* context, Body body) {
  if (!gate.Enter()) return Refuse(context);
  grpc::ServerUnaryReactor* reactor = new GatedUnaryReactor(&gate);
  FinishUnary(context, reactor, body);
  return reactor;
}

// The same for a body that may block: it runs on the pool, and the
// callback thread returns at once.
template <typename Body>
grpc::ServerUnaryReactor* Blocking(CallGate& gate, BlockingCallPool& pool,
                                   grpc::CallbackServerContext* context, Body body) {
  if (!gate.Enter()) return Refuse(context);
  grpc::ServerUnaryReactor* reactor = new GatedUnaryReactor(&gate);
  if (!pool.Submit([context, reactor, body] { FinishUnary(context, reactor, body); })) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 absl::StrFormat("%d model registrations and removals are queued "
                                                 "already; retry later",
                                                 kMaxQueuedBlockingCalls)));
  }
  return reactor;
}

// Whether a blocking call should stop: its caller went away or its
// deadline passed (gRPC also cancels calls at server shutdown).
std::function<absl::Status()> Interrupted(grpc::CallbackServerContext* context) {
  return [context]() -> absl::Status {
    if (absl::FromChrono(context->deadline()) < absl::Now()) {
      return absl::DeadlineExceededError("the call's deadline passed before it was done");
    }
    if (context->IsCancelled()) {
      return absl::CancelledError("the call was cancelled before it was done");
    }
    return absl::OkStatus();
  };
}

void ToProto(const HostedModel& model, const std::string& replica, v1::ModelInfo* out) {
  *out->mutable_spec() = model.spec;
  out->set_replica(replica);
  out->set_store(model.engine->store().Describe());
  out->set_memory_bytes(model.footprint.Total());
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
        "%d tokens in one request, over the limit of %d", tokens, limits_.max_tokens_per_request));
  }
  auto routed = engine.Route(request.layer(), request.gate_logits(), request.cache());
  if (!routed.ok()) return routed.status();
  ToProto(*routed, response);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* MoeRouterService::RouteTokens(grpc::CallbackServerContext* context,
                                                        const v1::RouteTokensRequest* request,
                                                        v1::RouteTokensResponse* response) {
  return Unary(*gate_, context, [&] { return Route(*request, response); });
}

grpc::ServerUnaryReactor* MoeRouterService::Prefetch(grpc::CallbackServerContext* context,
                                                     const v1::PrefetchRequest* request,
                                                     v1::PrefetchResponse* response) {
  return Unary(*gate_, context, [&]() -> absl::Status {
    auto model = registry_->Find(request->model());
    if (!model.ok()) return model.status();
    auto outcome = (*model)->engine->Prefetch({.layer = request->layer(),
                                               .experts = request->experts(),
                                               .budget = request->budget(),
                                               .gate_logits = request->gate_logits(),
                                               .cache = request->cache()});
    if (!outcome.ok()) return outcome.status();
    ToProto(*outcome, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* MoeRouterService::RegisterModel(grpc::CallbackServerContext* context,
                                                          const v1::RegisterModelRequest* request,
                                                          v1::ModelInfo* response) {
  if (absl::Status s = admin_->Check(*context, "RegisterModel"); !s.ok()) {
    return Unary(*gate_, context, [&] { return s; });
  }
  return Blocking(*gate_, blocking_calls_, context, [=, this]() -> absl::Status {
    auto created = registry_->Register(request->spec(), Interrupted(context));
    if (!created.ok()) return created.status();
    auto model = registry_->Find(request->spec().name());
    if (!model.ok()) return model.status();
    ToProto(**model, registry_->replica(), response);
    response->set_created(*created);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* MoeRouterService::UnregisterModel(
    grpc::CallbackServerContext* context, const v1::UnregisterModelRequest* request,
    v1::UnregisterModelResponse*) {
  if (absl::Status s = admin_->Check(*context, "UnregisterModel"); !s.ok()) {
    return Unary(*gate_, context, [&] { return s; });
  }
  return Blocking(*gate_, blocking_calls_, context, [=, this] {
    return request->model().empty() ? absl::InvalidArgumentError("model name must not be empty")
                                    : registry_->Unregister(request->model());
  });
}

grpc::ServerUnaryReactor* MoeRouterService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest*,
                                                       v1::ListModelsResponse* response) {
  return Unary(*gate_, context, [&] {
    for (const auto& model : registry_->List()) {
      ToProto(*model, registry_->replica(), response->add_models());
    }
    response->set_memory_limit_bytes(registry_->memory_limit_bytes());
    response->set_memory_committed_bytes(registry_->committed_bytes());
    return absl::OkStatus();
  });
}

absl::Status MoeRouterService::Stats(const v1::GetModelStatsRequest& request, v1::ModelStats* out) {
  auto model = registry_->Find(request.model());
  if (!model.ok()) return model.status();
  if (request.cache().empty()) {
    ToProto((*model)->engine->Stats(), out);
    return absl::OkStatus();
  }
  auto stats = (*model)->engine->CacheStats(request.cache());
  if (!stats.ok()) return stats.status();
  ToProto(request.model(), *stats, out);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* MoeRouterService::OpenCache(grpc::CallbackServerContext* context,
                                                      const v1::OpenCacheRequest* request,
                                                      v1::CacheInfo* response) {
  return Unary(*gate_, context, [&]() -> absl::Status {
    auto model = registry_->Find(request->model());
    if (!model.ok()) return model.status();
    auto info = (*model)->engine->OpenCache(request->cache(), request->budget_bytes(),
                                            request->eviction_policy());
    if (!info.ok()) return info.status();
    ToProto(request->model(), *info, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* MoeRouterService::CloseCache(grpc::CallbackServerContext* context,
                                                       const v1::CloseCacheRequest* request,
                                                       v1::CloseCacheResponse*) {
  return Unary(*gate_, context, [&]() -> absl::Status {
    auto model = registry_->Find(request->model());
    if (!model.ok()) return model.status();
    return (*model)->engine->CloseCache(request->cache());
  });
}

grpc::ServerUnaryReactor* MoeRouterService::SyncCache(grpc::CallbackServerContext* context,
                                                      const v1::SyncCacheRequest* request,
                                                      v1::CacheInfo* response) {
  return Unary(*gate_, context, [&]() -> absl::Status {
    auto model = registry_->Find(request->model());
    if (!model.ok()) return model.status();
    std::vector<ExpertKey> resident;
    resident.reserve(request->resident_size());
    for (const v1::ExpertRef& ref : request->resident()) {
      resident.push_back({ref.layer(), ref.expert()});
    }
    auto info = (*model)->engine->SyncCache(request->cache(), resident);
    if (!info.ok()) return info.status();
    ToProto(request->model(), *info, response);
    return absl::OkStatus();
  });
}

grpc::ServerBidiReactor<v1::WorkerReport, v1::FleetUpdate>* MoeRouterService::Learn(
    grpc::CallbackServerContext*) {
  return new LearnReactor(gate_, registry_, limits_.learn_stream);
}

grpc::ServerBidiReactor<v1::RouteTokensRequest, v1::RouteTokensResponse>*
MoeRouterService::RouteStream(grpc::CallbackServerContext*) {
  return new RouteStreamReactor(
      gate_, [this](const v1::RouteTokensRequest& request, v1::RouteTokensResponse* response) {
        return Route(request, response);
      });
}

// Streams one expert: the fetch completes on a paging worker (never
// blocking a callback thread), then a header chunk and data chunks follow,
// the expert pinned until the last is written. The reactor stays alive until
// the fetch callback has run, even if the client cancels, so the callback
// never sees a deleted reactor.
class FetchExpertReactor final : public grpc::ServerWriteReactor<v1::ExpertChunk> {
 public:
  // Admitted by `gate`, which it leaves when done.
  FetchExpertReactor(CallGate* gate, std::shared_ptr<const HostedModel> model, ExpertKey key,
                     absl::Time deadline)
      : gate_(gate),
        model_(std::move(model)),
        start_(absl::Now()),
        from_memory_(model_->engine->cache().IsResident(key)) {
    model_->engine->FetchAsync(key, deadline, [this](absl::StatusOr<PinnedExpert> expert) {
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

  void OnDone() override {
    gate_->Leave();
    delete this;
  }

 private:
  void WriteNext() {
    const ExpertData& e = *expert_;
    if (header_sent_ && offset_ >= e.size) {
      if (from_memory_) {
        model_->engine->RecordFetchFromMemory(absl::ToDoubleSeconds(absl::Now() - start_));
      }
      return Finish(grpc::Status::OK);
    }
    chunk_.Clear();
    if (!header_sent_) {
      header_sent_ = true;
      ToProtoHeader(e, &chunk_);
    }
    const uint64_t n = std::min(kExpertChunkBytes, e.size - offset_);
    chunk_.set_offset(offset_);
    chunk_.set_data(e.bytes.get() + offset_, n);
    offset_ += n;
    StartWrite(&chunk_);
  }

  CallGate* const gate_;
  const std::shared_ptr<const HostedModel> model_;  // keeps the engine alive
  const absl::Time start_;
  const bool from_memory_;  // resident when asked: the server tier served it
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  PinnedExpert expert_;
  bool header_sent_ = false;
  uint64_t offset_ = 0;
  v1::ExpertChunk chunk_;
};

grpc::ServerWriteReactor<v1::ExpertChunk>* MoeRouterService::FetchExpert(
    grpc::CallbackServerContext* context, const v1::FetchExpertRequest* request) {
  // A reactor that only reports an error.
  class Failed final : public grpc::ServerWriteReactor<v1::ExpertChunk> {
   public:
    explicit Failed(const grpc::Status& s) { Finish(s); }
    void OnDone() override { delete this; }
  };
  if (!gate_->Enter()) {
    context->AddTrailingMetadata(kRefusedTrailer, "draining");
    return new Failed(DrainingStatus());
  }
  auto model = registry_->Find(request->model());
  if (!model.ok()) {
    gate_->Leave();
    return new Failed(ToGrpcStatus(model.status()));
  }
  // Retries under a thrashing budget stop at the call's deadline, or after
  // a minute for a call without one.
  const absl::Time deadline =
      std::min(absl::FromChrono(context->deadline()), absl::Now() + absl::Minutes(1));
  return new FetchExpertReactor(gate_, *std::move(model), {request->layer(), request->expert()},
                                deadline);
}

grpc::ServerUnaryReactor* MoeRouterService::GetModelStats(grpc::CallbackServerContext* context,
                                                          const v1::GetModelStatsRequest* request,
                                                          v1::ModelStats* response) {
  return Unary(*gate_, context, [&] { return Stats(*request, response); });
}

}  // namespace moe_router
