// moe-null-routerd: the baseline of the loadgen benchmark. It serves the
// MoeRouter API's RouteTokens, RouteStream and ListModels with the callback
// API like moe-routerd, but does no routing: every response is a canned one
// of the size moe-routerd would send (top-2 of 8 experts per token, weights,
// residency, and a few paging actions). What loadgen measures against it is
// gRPC and protobuf alone.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "server/route_stream_reactor.h"
#include "server/termination_signals.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "address to listen on");
ABSL_FLAG(std::string, model, "mixtral-8x7b", "the one model ListModels reports");
ABSL_FLAG(uint32_t, num_layers, 32, "layers of that model");
ABSL_FLAG(uint32_t, num_experts, 8, "experts of that model");
ABSL_FLAG(uint32_t, top_k, 2, "experts chosen per token");

namespace {

class NullRouter final : public moe_router::v1::MoeRouter::CallbackService {
 public:
  NullRouter(uint32_t layers, uint32_t experts, uint32_t top_k, const std::string& model)
      : experts_(experts), top_k_(top_k) {
    moe_router::v1::ModelSpec* spec = models_.add_models()->mutable_spec();
    spec->set_name(model);
    spec->set_num_layers(layers);
    spec->set_num_experts(experts);
    spec->set_top_k(top_k);
  }

  // The response moe-routerd would give: ids, weights and residency per
  // chosen expert, plus two page-ins and two prefetches.
  void Respond(const moe_router::v1::RouteTokensRequest& request,
               moe_router::v1::RouteTokensResponse* response) const {
    const uint32_t tokens = request.gate_logits_size() / experts_;
    for (uint32_t i = 0; i < tokens * top_k_; ++i) {
      response->add_experts(i % experts_);
      response->add_weights(1.0f / top_k_);
      response->add_resident(i % 2 == 0);
    }
    for (uint32_t e = 0; e < 2; ++e) {
      auto* ref = response->add_urgent_page_ins();
      ref->set_layer(request.layer());
      ref->set_expert(e);
      ref = response->add_prefetches();
      ref->set_layer(request.layer() + 1);
      ref->set_expert(e);
    }
    response->set_tokens(tokens);
    response->set_changed_tokens(tokens / 4);
    response->set_gate_mass_retained(0.97);
  }

  grpc::ServerUnaryReactor* RouteTokens(grpc::CallbackServerContext* context,
                                        const moe_router::v1::RouteTokensRequest* request,
                                        moe_router::v1::RouteTokensResponse* response) override {
    Respond(*request, response);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerBidiReactor<moe_router::v1::RouteTokensRequest, moe_router::v1::RouteTokensResponse>*
  RouteStream(grpc::CallbackServerContext*) override {
    return new moe_router::RouteStreamReactor(
        /*gate=*/nullptr, [this](const moe_router::v1::RouteTokensRequest& request,
                                 moe_router::v1::RouteTokensResponse* response) {
          Respond(request, response);
          return absl::OkStatus();
        });
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const moe_router::v1::ListModelsRequest*,
                                       moe_router::v1::ListModelsResponse* response) override {
    *response = models_;
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const uint32_t experts_;
  const uint32_t top_k_;
  moe_router::v1::ListModelsResponse models_;
};

}  // namespace

int main(int argc, char** argv) {
  // absl lists under --help the flags of files named like the program.
  absl::FlagsUsageConfig usage;
  usage.contains_helpshort_flags = usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "null_router_server.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "the null MoeRouter service loadgen compares moe-routerd against.\n"
      "  moe-null-routerd [--listen=127.0.0.1:0] [flags]");
  absl::ParseCommandLine(argc, argv);
  const sigset_t signals = moe_router::BlockTerminationSignals();
  NullRouter service(absl::GetFlag(FLAGS_num_layers), absl::GetFlag(FLAGS_num_experts),
                     absl::GetFlag(FLAGS_top_k), absl::GetFlag(FLAGS_model));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "moe-null-routerd: cannot listen on %s\n",
                 absl::GetFlag(FLAGS_listen).c_str());
    return 1;
  }
  std::fprintf(stderr, "moe-null-routerd: listening on port %d\n", port);
  moe_router::WaitForTerminationSignal(signals);
  server->Shutdown();
  return 0;
}
