// The Learn stream's two defences against folding a report twice, each on
// its own, driven by hand-written messages over a real stream: the hello
// acknowledges what the service folded (so a worker drops it), and the
// fold skips a resend of a report it folded (whatever the worker does),
// counting it.
#include <grpcpp/grpcpp.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "server/server.h"
#include "tests/testing/local_server.h"
#include "tests/testing/test_specs.h"

namespace moe_router {
namespace {

constexpr uint64_t kWorker = 0x5eed;
constexpr uint32_t kExperts = 8;

class LearnStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = testing::StartLocalServer();
    ASSERT_NE(server_, nullptr);
    ASSERT_TRUE(server_->registry().Register(testing::SyntheticSpec("m", 2, 1000, 8)).ok());
    stub_ = v1::MoeRouter::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                                       grpc::InsecureChannelCredentials()));
  }

  // One Learn stream of the worker run kWorker.
  struct Stream {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerReport, v1::FleetUpdate>> rw;
  };

  // Opens a stream whose hello says the worker resends from
  // `first_sequence`; the hello's answer's acknowledgement.
  uint64_t Open(Stream* s, uint64_t first_sequence) {
    s->rw = stub_->Learn(&s->context);
    v1::WorkerReport hello;
    hello.mutable_hello()->set_model("m");
    hello.mutable_hello()->set_cache("w");
    hello.mutable_hello()->set_budget_bytes(8000);
    hello.mutable_hello()->set_worker_id(kWorker);
    hello.mutable_hello()->set_first_sequence(first_sequence);
    EXPECT_TRUE(s->rw->Write(hello));
    v1::FleetUpdate update;
    EXPECT_TRUE(s->rw->Read(&update));
    return update.acknowledged();
  }

  // Report `sequence`: one token of layer 0 routed to experts 0 and 1;
  // the acknowledgement of its answer.
  static uint64_t Send(Stream* s, uint64_t sequence) {
    v1::WorkerReport report;
    report.set_sequence(sequence);
    v1::LayerRoutingReport* layer = report.add_layers();
    layer->set_layer(0);
    layer->set_tokens(1);
    layer->set_batches(1);
    layer->set_misses(2);
    layer->set_range_keep(1);
    for (uint32_t e = 0; e < kExperts; ++e) layer->add_activations(e < 2 ? 1 : 0);
    EXPECT_TRUE(s->rw->Write(report));
    v1::FleetUpdate update;
    EXPECT_TRUE(s->rw->Read(&update));
    return update.acknowledged();
  }

  static void Close(Stream* s) {
    s->rw->WritesDone();
    EXPECT_TRUE(s->rw->Finish().ok());
  }

  ModelEngine& engine() { return *(*server_->registry().Find("m"))->engine; }

  std::unique_ptr<RouterServer> server_;
  std::unique_ptr<v1::MoeRouter::Stub> stub_;
};

// A worker that resends report 1 although the new stream's hello said it
// was folded (or a worker whose hello said nothing of it): not folded
// again, and counted.
TEST_F(LearnStreamTest, TheFoldSkipsAResendWhateverTheHelloSaid) {
  Stream first;
  EXPECT_EQ(Open(&first, 1), 0u);
  EXPECT_EQ(Send(&first, 1), 1u);
  Close(&first);
  EXPECT_EQ(engine().LayerTokens(0), 1u);
  Stream second;
  Open(&second, 1);
  EXPECT_EQ(Send(&second, 1), 1u);  // the resend, ignoring the hello
  EXPECT_EQ(engine().LayerTokens(0), 1u) << "report 1 was folded twice";
  EXPECT_EQ(engine().metrics().Snapshot().resent_reports, 1u);
  EXPECT_EQ(Send(&second, 2), 2u);  // a new one is folded
  EXPECT_EQ(engine().LayerTokens(0), 2u);
  Close(&second);
}

// A new stream's hello acknowledges every report the service folded for
// the worker, though the worker says it will resend from the first: the
// worker drops them rather than lean on the fold skipping them.
TEST_F(LearnStreamTest, TheHelloAcknowledgesWhatWasFolded) {
  Stream first;
  Open(&first, 1);
  Send(&first, 1);
  EXPECT_EQ(Send(&first, 2), 2u);
  Close(&first);
  Stream second;
  EXPECT_EQ(Open(&second, 1), 2u);
  Close(&second);
  EXPECT_EQ(engine().metrics().Snapshot().resent_reports, 0u);
}

}  // namespace
}  // namespace moe_router
