#include "client/client.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/base/file_io.h"
#include "core/store/checksum.h"
#include "proto/grpc_status.h"

namespace moe_router {
namespace {

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> CredentialsFor(const ClientTls& tls) {
  if (tls.ca.empty() && tls.cert.empty() && tls.key.empty()) {
    if (!tls.server_name.empty()) {
      return absl::InvalidArgumentError("a TLS server name needs a CA (--tls_ca)");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (tls.cert.empty() != tls.key.empty()) {
    return absl::InvalidArgumentError("a client certificate needs both --tls_cert and --tls_key");
  }
  grpc::SslCredentialsOptions options;
  // An empty CA means the system's roots (a server with a public certificate).
  for (auto [path, pem] :
       {std::pair{&tls.ca, &options.pem_root_certs}, std::pair{&tls.cert, &options.pem_cert_chain},
        std::pair{&tls.key, &options.pem_private_key}}) {
    if (path->empty()) continue;
    auto text = ReadFile(*path);
    if (!text.ok()) return text.status();
    *pem = *std::move(text);
  }
  return grpc::SslCredentials(options);
}

v1::RouteTokensRequest RouteRequest(const std::string& model, uint32_t layer,
                                    absl::Span<const float> logits, const std::string& cache) {
  v1::RouteTokensRequest request;
  request.set_model(model);
  request.set_layer(layer);
  request.set_cache(cache);
  request.mutable_gate_logits()->Add(logits.begin(), logits.end());
  return request;
}

// Adds one FetchExpert chunk to `out`; the first carries the header.
absl::Status Append(const v1::ExpertChunk& chunk, bool first, FetchedExpert* out) {
  if (first) {
    out->header = chunk;
    out->header.clear_data();
  }
  if (chunk.offset() != out->bytes.size()) {
    return absl::DataLossError(
        absl::StrFormat("chunk at offset %d, expected %d", chunk.offset(), out->bytes.size()));
  }
  if (chunk.data().size() > out->header.total_bytes() - out->bytes.size()) {
    // Never hold more than the header announced.
    return absl::DataLossError(
        absl::StrFormat("chunk at offset %d runs past the %d bytes announced", chunk.offset(),
                        out->header.total_bytes()));
  }
  out->bytes += chunk.data();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target,
                                                        const ClientTls& tls) {
  if (target.empty()) return absl::InvalidArgumentError("server address must not be empty");
  auto credentials = CredentialsFor(tls);
  if (!credentials.ok()) return credentials.status();
  grpc::ChannelArguments arguments;
  if (!tls.server_name.empty()) arguments.SetSslTargetNameOverride(tls.server_name);
  // One Client, one connection: gRPC would share a connection between
  // channels to the same target, and through HAProxy a stream one worker
  // leaves unread stalls every call on its connection.
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Long-lived streams (RouteStream, Learn) through a proxy or NAT that
  // drops idle connections: a ping every 30 s (the server accepts them).
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  auto channel = grpc::CreateCustomChannel(target, *credentials, arguments);
  if (channel == nullptr) {
    return absl::UnavailableError(absl::StrFormat("cannot create a channel to %s", target));
  }
  return std::unique_ptr<Client>(new Client(std::move(channel)));
}

void AddRoutingHeaders(grpc::ClientContext* context, const std::string& model,
                       const std::string& cache) {
  if (!model.empty()) context->AddMetadata(kModelHeader, model);
  if (!cache.empty()) context->AddMetadata(kCacheHeader, absl::StrCat(model, "/", cache));
}

template <typename Attempt>
absl::Status Client::Attempts(const std::string& model, const std::string& cache,
                              Attempt attempt) const {
  const absl::Time deadline = absl::Now() + timeout_;
  absl::Duration backoff = absl::Milliseconds(20);
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    AddRoutingHeaders(&context, model, cache);
    const grpc::Status status = attempt(&context);
    const bool refused = context.GetServerTrailingMetadata().count(kRefusedTrailer) > 0;
    if (status.ok() || !refused || absl::Now() + backoff >= deadline) {
      return FromGrpcStatus(status);
    }
    absl::SleepFor(backoff);
    backoff = std::min(2 * backoff, absl::Milliseconds(500));
  }
}

RouteStream::RouteStream(v1::MoeRouter::Stub& stub, const std::string& model,
                         const std::string& cache) {
  AddRoutingHeaders(&context_, model, cache);
  stream_ = stub.RouteStream(&context_);
}

RouteStream::~RouteStream() {
  if (!finished_) context_.TryCancel();
}

absl::StatusOr<v1::RouteTokensResponse> RouteStream::Route(const std::string& model, uint32_t layer,
                                                           absl::Span<const float> logits,
                                                           const std::string& cache) {
  v1::RouteTokensResponse response;
  if (finished_ || !stream_->Write(RouteRequest(model, layer, logits, cache)) ||
      !stream_->Read(&response)) {
    // The server ended the call: its status says why.
    absl::Status s = Finish();
    return s.ok() ? absl::UnavailableError("the route stream was closed") : s;
  }
  return response;
}

absl::Status RouteStream::Finish() {
  if (finished_) return absl::FailedPreconditionError("the route stream is already finished");
  finished_ = true;
  stream_->WritesDone();
  return FromGrpcStatus(stream_->Finish());
}

template <typename Request, typename Response>
absl::StatusOr<Response> Client::Call(
    grpc::Status (v1::MoeRouter::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const std::string& model, const Request& request, const std::string& cache) {
  Response response;
  absl::Status s = Attempts(model, cache, [&](grpc::ClientContext* context) {
    return (stub_.get()->*method)(context, request, &response);
  });
  if (!s.ok()) return s;
  return response;
}

absl::StatusOr<v1::RouteTokensResponse> Client::Route(const std::string& model, uint32_t layer,
                                                      absl::Span<const float> logits,
                                                      const std::string& cache) {
  return Call(&v1::MoeRouter::Stub::RouteTokens, model, RouteRequest(model, layer, logits, cache),
              cache);
}

absl::StatusOr<v1::PrefetchResponse> Client::Prefetch(const v1::PrefetchRequest& request) {
  return Call(&v1::MoeRouter::Stub::Prefetch, request.model(), request, request.cache());
}

absl::StatusOr<v1::CacheInfo> Client::OpenCache(const std::string& model, const std::string& cache,
                                                uint64_t budget_bytes,
                                                const std::string& eviction_policy) {
  v1::OpenCacheRequest request;
  request.set_model(model);
  request.set_cache(cache);
  request.set_budget_bytes(budget_bytes);
  request.set_eviction_policy(eviction_policy);
  return Call(&v1::MoeRouter::Stub::OpenCache, model, request, cache);
}

absl::Status Client::CloseCache(const std::string& model, const std::string& cache) {
  v1::CloseCacheRequest request;
  request.set_model(model);
  request.set_cache(cache);
  return Call(&v1::MoeRouter::Stub::CloseCache, model, request, cache).status();
}

absl::StatusOr<v1::CacheInfo> Client::SyncCache(const v1::SyncCacheRequest& request) {
  return Call(&v1::MoeRouter::Stub::SyncCache, request.model(), request, request.cache());
}

absl::StatusOr<v1::PrefetchResponse> Client::Prefetch(const std::string& model, uint32_t layer,
                                                      absl::Span<const uint32_t> experts,
                                                      uint32_t budget) {
  v1::PrefetchRequest request;
  request.set_model(model);
  request.set_layer(layer);
  request.mutable_experts()->Add(experts.begin(), experts.end());
  request.set_budget(budget);
  return Prefetch(request);
}

absl::StatusOr<v1::ModelInfo> Client::Register(const v1::ModelSpec& spec) {
  v1::RegisterModelRequest request;
  *request.mutable_spec() = spec;
  return Call(&v1::MoeRouter::Stub::RegisterModel, spec.name(), request);
}

absl::Status Client::Unregister(const std::string& model) {
  v1::UnregisterModelRequest request;
  request.set_model(model);
  return Call(&v1::MoeRouter::Stub::UnregisterModel, model, request).status();
}

absl::StatusOr<std::vector<v1::ModelInfo>> Client::ListModels() {
  auto response = Call(&v1::MoeRouter::Stub::ListModels, "", v1::ListModelsRequest());
  if (!response.ok()) return response.status();
  return std::vector<v1::ModelInfo>(response->models().begin(), response->models().end());
}

absl::StatusOr<v1::ModelSpec> Client::FindModel(const std::string& name) {
  auto models = ListModels();
  if (!models.ok()) return models.status();
  for (const v1::ModelInfo& m : *models) {
    if (m.spec().name() == name) return m.spec();
  }
  return absl::NotFoundError(absl::StrFormat("the server has no model named '%s'", name));
}

absl::StatusOr<v1::ModelStats> Client::Stats(const std::string& model, const std::string& cache) {
  v1::GetModelStatsRequest request;
  request.set_model(model);
  request.set_cache(cache);
  return Call(&v1::MoeRouter::Stub::GetModelStats, model, request, cache);
}

absl::StatusOr<FetchedExpert> Client::Fetch(const std::string& model, uint32_t layer,
                                            uint32_t expert, const std::string& cache) {
  v1::FetchExpertRequest request;
  request.set_model(model);
  request.set_layer(layer);
  request.set_expert(expert);
  FetchedExpert out;
  absl::Status received;
  absl::Status s = Attempts(model, cache, [&](grpc::ClientContext* context) {
    auto reader = stub_->FetchExpert(context, request);
    out = FetchedExpert();
    received = absl::OkStatus();
    v1::ExpertChunk chunk;
    // Read to the end even after a bad chunk, so the call's own status
    // (which may explain it) comes first.
    for (bool first = true; reader->Read(&chunk); first = false) {
      if (received.ok()) received = Append(chunk, first, &out);
    }
    return reader->Finish();
  });
  if (!s.ok()) return s;
  if (!received.ok()) return received;
  if (absl::Status v = VerifyExpert(out); !v.ok()) return v;
  return out;
}

absl::Status VerifyExpert(const FetchedExpert& expert) {
  const v1::ExpertChunk& header = expert.header;
  if (header.tensors().empty()) return absl::DataLossError("the expert arrived without tensors");
  if (expert.bytes.size() != header.total_bytes()) {
    return absl::DataLossError(
        absl::StrFormat("received %d of %d bytes", expert.bytes.size(), header.total_bytes()));
  }
  uint64_t offset = 0;
  std::vector<std::pair<std::string, uint64_t>> digests;
  for (const v1::TensorHeader& t : header.tensors()) {
    if (t.size_bytes() > expert.bytes.size() - offset) {
      return absl::DataLossError(absl::StrFormat("tensor '%s' runs past the data", t.name()));
    }
    const uint64_t sum =
        Xxh3({reinterpret_cast<const uint8_t*>(expert.bytes.data()) + offset, t.size_bytes()});
    if (sum != t.xxh3()) {
      return absl::DataLossError(
          absl::StrFormat("tensor '%s' arrived with a different checksum", t.name()));
    }
    digests.emplace_back(t.name(), sum);
    offset += t.size_bytes();
  }
  if (offset != expert.bytes.size()) {
    return absl::DataLossError(absl::StrFormat("the tensors cover %d of the %d bytes received",
                                               offset, expert.bytes.size()));
  }
  if (ExpertChecksum(digests) != header.expert_xxh3()) {
    return absl::DataLossError("the expert's checksum does not match its tensors");
  }
  return absl::OkStatus();
}

}  // namespace moe_router
