#ifndef MOE_ROUTER_CLIENT_CLIENT_H_
#define MOE_ROUTER_CLIENT_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "moe_router/v1/moe_router.grpc.pb.h"

namespace moe_router {

/// A fetched expert: its description (the first chunk's header fields) and
/// its bytes, checked against the checksums the server sent.
struct FetchedExpert {
  v1::ExpertChunk header;  // tensors, precision, sizes, checksums (no data)
  std::string bytes;
};

/// Checks a fetched expert as FetchExpert documents it: the tensors cover
/// exactly the bytes announced, each tensor's XXH3 matches its bytes, and the
/// expert checksum matches the tensors. DATA_LOSS naming what differs.
absl::Status VerifyExpert(const FetchedExpert& expert);

/// How a client secures its channel. All empty: plaintext. ca: TLS, trusting
/// the server certificates ca signed. cert and key: the client certificate
/// for mutual TLS. server_name overrides the name checked against the
/// server's certificate (when dialling an address it was not issued for).
struct ClientTls {
  std::string ca{};
  std::string cert{};
  std::string key{};
  std::string server_name{};
};

/// One RouteStream call: each Route writes a request and reads its response,
/// in order, over one HTTP/2 stream (no per-call setup). Not thread-safe:
/// one stream per worker thread. Destroying it cancels the call.
class RouteStream {
 public:
  /// `model` (if any) goes in the call's x-moe-model header, `cache` (if
  /// any: the worker cache its requests route against) in x-moe-cache.
  RouteStream(v1::MoeRouter::Stub& stub, const std::string& model, const std::string& cache = "");
  ~RouteStream();
  /// With `cache`, against that worker cache (see WorkerCache).
  absl::StatusOr<v1::RouteTokensResponse> Route(const std::string& model, uint32_t layer,
                                                absl::Span<const float> logits,
                                                const std::string& cache = "");
  /// Half-closes and returns the call's final status.
  absl::Status Finish();

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::RouteTokensRequest, v1::RouteTokensResponse>>
      stream_;
  bool finished_ = false;
};

/// Calls about one model carry its name in this metadata header, so a proxy
/// can send all of a model's traffic to the replica that caches its experts
/// (deploy/envoy hashes on it).
inline constexpr char kModelHeader[] = "x-moe-model";
/// On every call about a worker cache, "<model>/<cache>": what a proxy keeps
/// one worker on one replica by (deploy/haproxy, deploy/envoy).
inline constexpr char kCacheHeader[] = "x-moe-cache";
/// Adds x-moe-model (if `model`) and x-moe-cache (if `cache`) to a call.
void AddRoutingHeaders(grpc::ClientContext* context, const std::string& model,
                       const std::string& cache);

/// Typed calls to a moe-routerd. Errors come back as absl::Status with the
/// server's code and message. A call a draining replica refuses is sent
/// again until its deadline. Thread-safe (one channel, shared).
///
///   auto client = Client::Connect("localhost:50051");
///   auto routed = (*client)->Route("mixtral-8x7b", 0, logits);
class Client {
 public:
  /// Reading a TLS file that is missing is an error naming it; the
  /// connection itself is made lazily, on the first call.
  /// The channel, for other stubs over the same connection (InProcessWorker).
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target,
                                                         const ClientTls& tls = {});
  /// Deadline of every call (default 10 s).
  void set_timeout(absl::Duration timeout) { timeout_ = timeout; }
  /// A client on the same channel whose calls have `timeout` as deadline:
  /// for one caller's own deadlines without touching this client's.
  std::unique_ptr<Client> WithTimeout(absl::Duration timeout) const {
    auto client = std::unique_ptr<Client>(new Client(channel_));
    client->timeout_ = timeout;
    return client;
  }

  absl::StatusOr<v1::RouteTokensResponse> Route(const std::string& model, uint32_t layer,
                                                absl::Span<const float> logits,
                                                const std::string& cache = "");
  /// A stream for routing many batches of `model`; it has no deadline.
  std::unique_ptr<RouteStream> OpenRouteStream(const std::string& model) {
    return std::make_unique<RouteStream>(*stub_, model);
  }
  absl::StatusOr<v1::PrefetchResponse> Prefetch(const std::string& model, uint32_t layer,
                                                absl::Span<const uint32_t> experts,
                                                uint32_t budget);
  absl::StatusOr<v1::PrefetchResponse> Prefetch(const v1::PrefetchRequest& request);
  absl::StatusOr<v1::ModelInfo> Register(const v1::ModelSpec& spec);
  absl::Status Unregister(const std::string& model);
  absl::StatusOr<std::vector<v1::ModelInfo>> ListModels();
  /// The spec of the model named `name`; NOT_FOUND if the server has none.
  absl::StatusOr<v1::ModelSpec> FindModel(const std::string& name);
  /// With `cache`, that worker cache's figures.
  absl::StatusOr<v1::ModelStats> Stats(const std::string& model, const std::string& cache = "");
  absl::StatusOr<v1::CacheInfo> OpenCache(const std::string& model, const std::string& cache,
                                          uint64_t budget_bytes,
                                          const std::string& eviction_policy = "");
  absl::Status CloseCache(const std::string& model, const std::string& cache);
  absl::StatusOr<v1::CacheInfo> SyncCache(const v1::SyncCacheRequest& request);
  /// Streams an expert and verifies it (VerifyExpert); a chunk out of order
  /// or past the size announced, or a mismatch, is DATA_LOSS saying which.
  /// `cache`: the worker cache it is fetched for, so that a proxy sends the
  /// call to the replica that staged it.
  absl::StatusOr<FetchedExpert> Fetch(const std::string& model, uint32_t layer, uint32_t expert,
                                      const std::string& cache = "");

  v1::MoeRouter::Stub& stub() { return *stub_; }

 private:
  explicit Client(std::shared_ptr<grpc::Channel> channel)
      : channel_(std::move(channel)), stub_(v1::MoeRouter::NewStub(channel_)) {}
  /// Runs `attempt` (grpc::Status(grpc::ClientContext*)) with a context
  /// that has the call's deadline and names the model and cache, again
  /// while a draining replica refuses it (it says nothing was done: through
  /// a proxy the next attempt reaches another replica), with backoff, until
  /// the deadline.
  template <typename Attempt>
  absl::Status Attempts(const std::string& model, const std::string& cache, Attempt attempt) const;
  /// One unary call of `method` about `model`, errors as absl::Status.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(
      grpc::Status (v1::MoeRouter::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
      const std::string& model, const Request& request, const std::string& cache = "");

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MoeRouter::Stub> stub_;
  absl::Duration timeout_ = absl::Seconds(10);
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CLIENT_CLIENT_H_
