// The client's FetchExpert verification against a server that lies: an
// in-process MoeRouter service relays the real server's stream for an expert
// larger than one chunk, altered on the way.
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client.h"
#include "core/store/checksum.h"
#include "core/store/synthetic_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;
using Chunks = std::vector<v1::ExpertChunk>;

// 2.5 chunks: a header chunk with data, a full middle chunk, a short tail.
constexpr uint64_t kExpertBytes = 5 * kExpertChunkBytes / 2;

// Relays FetchExpert from `upstream`, applying the current tamper first.
class TamperingService final : public v1::MoeRouter::Service {
 public:
  explicit TamperingService(std::shared_ptr<grpc::Channel> upstream)
      : upstream_(v1::MoeRouter::NewStub(std::move(upstream))) {}
  void set_tamper(std::function<void(Chunks&)> tamper) { tamper_ = std::move(tamper); }

  grpc::Status FetchExpert(grpc::ServerContext*, const v1::FetchExpertRequest* request,
                           grpc::ServerWriter<v1::ExpertChunk>* writer) override {
    grpc::ClientContext context;
    auto reader = upstream_->FetchExpert(&context, *request);
    Chunks chunks;
    v1::ExpertChunk chunk;
    while (reader->Read(&chunk)) chunks.push_back(chunk);
    if (grpc::Status s = reader->Finish(); !s.ok()) return s;
    if (tamper_) tamper_(chunks);
    for (const v1::ExpertChunk& c : chunks) writer->Write(c);
    return grpc::Status::OK;
  }

 private:
  std::unique_ptr<v1::MoeRouter::Stub> upstream_;
  std::function<void(Chunks&)> tamper_;  // set between calls only
};

class FetchVerificationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    auto server = RouterServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_TRUE(
        server_->registry().Register(testing::SyntheticSpec("big", 2, kExpertBytes, 4)).ok());
    service_ = std::make_unique<TamperingService>(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    liar_ = builder.BuildAndStart();
    ASSERT_NE(liar_, nullptr);
    liar_address_ = "127.0.0.1:" + std::to_string(port);
    client_ = *Client::Connect(liar_address_);
  }
  void TearDown() override {
    if (liar_ != nullptr) liar_->Shutdown();
  }

  absl::Status FetchWith(std::function<void(Chunks&)> tamper) {
    service_->set_tamper(std::move(tamper));
    return client_->Fetch("big", 1, 3).status();
  }

  std::unique_ptr<RouterServer> server_;
  std::unique_ptr<TamperingService> service_;
  std::unique_ptr<grpc::Server> liar_;
  std::string liar_address_;
  std::unique_ptr<Client> client_;
};

TEST_F(FetchVerificationTest, AnHonestStreamOfSeveralChunksArrivesAsTheStoreHoldsIt) {
  Chunks seen;
  service_->set_tamper([&](Chunks& c) { seen = c; });
  auto fetched = client_->Fetch("big", 1, 3);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ(seen.size(), 3u);
  auto store = SyntheticStore::Create(
      {.num_layers = 2, .num_experts = 8, .variants = {{"default", kExpertBytes}}});
  auto expected = (*store)->Load({1, 3}, "default");
  ASSERT_TRUE(expected.ok());
  ASSERT_EQ(fetched->bytes.size(), kExpertBytes);
  EXPECT_TRUE(std::equal(fetched->bytes.begin(), fetched->bytes.end(),
                         reinterpret_cast<const char*>((*expected)->bytes.get())));
  EXPECT_EQ(fetched->header.expert_xxh3(), (*expected)->checksum);
}

TEST_F(FetchVerificationTest, EveryAlteredStreamIsDataLossSayingWhat) {
  struct Case {
    const char* name;
    std::function<void(Chunks&)> tamper;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"a flipped byte", [](Chunks& c) { (*c[1].mutable_data())[1000] ^= 1; },
       "arrived with a different checksum"},
      {"chunks swapped", [](Chunks& c) { std::swap(c[1], c[2]); }, "chunk at offset"},
      {"data swapped, offsets kept",
       [](Chunks& c) {
         // Two equal-sized pieces of data trade places under honest offsets.
         std::string& a = *c[0].mutable_data();
         std::string& b = *c[1].mutable_data();
         std::swap_ranges(a.begin(), a.begin() + 4096, b.begin());
       },
       "arrived with a different checksum"},
      {"a middle chunk dropped", [](Chunks& c) { c.erase(c.begin() + 1); }, "chunk at offset"},
      {"the last chunk dropped", [](Chunks& c) { c.pop_back(); }, "received"},
      {"a chunk repeated at the end",
       [](Chunks& c) {
         v1::ExpertChunk extra = c.back();
         extra.set_offset(c.back().offset() + c.back().data().size());
         c.push_back(extra);
       },
       "runs past the"},
      {"total size understated", [](Chunks& c) { c[0].set_total_bytes(c[0].total_bytes() - 1); },
       "runs past the"},
      {"total size overstated", [](Chunks& c) { c[0].set_total_bytes(uint64_t{1} << 62); },
       "received"},
      {"tensor sizes shifted, sum kept",
       [](Chunks& c) {
         auto* t = c[0].mutable_tensors();
         t->Mutable(0)->set_size_bytes(t->Get(0).size_bytes() + 2);
         t->Mutable(1)->set_size_bytes(t->Get(1).size_bytes() - 2);
       },
       "arrived with a different checksum"},
      {"a tensor left out", [](Chunks& c) { c[0].mutable_tensors()->RemoveLast(); },
       "the tensors cover"},
      {"data and tensor checksum both changed",
       [](Chunks& c) {
         // Consistent per tensor: only the expert checksum can tell.
         (*c[0].mutable_data())[0] ^= 1;
         v1::TensorHeader* first = c[0].mutable_tensors(0);
         const std::string& data = c[0].data();
         first->set_xxh3(
             Xxh3({reinterpret_cast<const uint8_t*>(data.data()), first->size_bytes()}));
       },
       "the expert's checksum does not match its tensors"},
      {"a tensor renamed", [](Chunks& c) { c[0].mutable_tensors(1)->set_name("evil"); },
       "the expert's checksum does not match its tensors"},
      {"no chunks at all", [](Chunks& c) { c.clear(); }, "without tensors"},
  };
  for (const Case& c : cases) {
    const absl::Status s = FetchWith(c.tamper);
    EXPECT_TRUE(absl::IsDataLoss(s)) << c.name << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.name;
  }
  // The tensor sizes used above are what the synthetic store makes.
  Chunks honest;
  service_->set_tamper([&](Chunks& c) { honest = c; });
  ASSERT_TRUE(client_->Fetch("big", 1, 3).ok());
  ASSERT_GE(honest.size(), 2u);
  ASSERT_GE(honest[0].tensors_size(), 2);
  EXPECT_GE(honest[0].tensors(0).size_bytes(), 4096u);
  EXPECT_EQ(honest[0].data().size(), honest[1].data().size());
}

// The Python client verifies as the C++ one does: an honest stream arrives
// as the store holds it, each lie is ExpertDataLoss naming what.
TEST_F(FetchVerificationTest, ThePythonClientVerifiesTooAndSaysWhat) {
  testing::TempDir dir;
  const std::string script =
      absl::StrCat("import sys; sys.path.insert(0, '", PY_PACKAGE_DIR, "')\n",
                   "import grpc, xxhash\n", "from moe_router import ExpertDataLoss, fetch_expert\n",
                   "from moe_router.v1 import moe_router_pb2_grpc as pbg\n",
                   "stub = pbg.MoeRouterStub(grpc.insecure_channel('", liar_address_, "'))\n",
                   "try:\n", "    data = fetch_expert(stub, 'big', 1, 3)\n",
                   "    print('ok', len(data), xxhash.xxh3_64_hexdigest(data))\n",
                   "except ExpertDataLoss as e:\n", "    print('lost', e)\n");
  ASSERT_TRUE(
      testing::RunCommand(absl::StrCat("cat > ", dir.File("fetch.py"), " <<'EOF'\n", script, "EOF"))
          .exit_code == 0);
  const auto run = [&](std::function<void(Chunks&)> tamper) {
    service_->set_tamper(std::move(tamper));
    const testing::CommandResult r =
        testing::RunCommand(absl::StrCat("/usr/bin/python3 ", dir.File("fetch.py")));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  };
  auto honest = client_->Fetch("big", 1, 3);
  ASSERT_TRUE(honest.ok());
  EXPECT_THAT(run(nullptr),
              HasSubstr(absl::StrFormat(
                  "ok %d %016x", kExpertBytes,
                  Xxh3({reinterpret_cast<const uint8_t*>(honest->bytes.data()), kExpertBytes}))));
  const std::string first = honest->header.tensors(0).name();
  EXPECT_THAT(run([](Chunks& c) { (*c[1].mutable_data())[1000] ^= 1; }),
              HasSubstr("lost DATA_LOSS: expert L1/E3: tensor '"));
  EXPECT_THAT(run([](Chunks& c) { (*c[0].mutable_data())[0] ^= 1; }),
              HasSubstr("tensor '" + first + "' arrived with a different checksum"));
  EXPECT_THAT(run([](Chunks& c) { c[0].mutable_tensors(1)->set_name("evil"); }),
              HasSubstr("the expert's checksum does not match its tensors"));
  EXPECT_THAT(run([](Chunks& c) { c.pop_back(); }), HasSubstr("received"));
  EXPECT_THAT(run([](Chunks& c) { std::swap(c[1], c[2]); }), HasSubstr("chunk at offset"));
  EXPECT_THAT(run([](Chunks& c) { c[0].mutable_tensors()->RemoveLast(); }),
              HasSubstr("the tensors cover"));
}

// The CLI says "verified" only for what was: a lying server makes it fail.
TEST_F(FetchVerificationTest, CliReportsVerifiedOnlyWhenItWas) {
  testing::TempDir dir;
  const std::string command = std::string(MOE_ROUTER_CLI_PATH) + " fetch --server " +
                              liar_address_ + " --model big --layer 1 --expert 3 --out " +
                              dir.File("e.safetensors");
  service_->set_tamper(nullptr);
  const testing::CommandResult honest = testing::RunCommand(command);
  EXPECT_EQ(honest.exit_code, 0) << honest.output;
  EXPECT_THAT(honest.output, HasSubstr("checksums verified"));
  service_->set_tamper([](Chunks& c) { (*c[2].mutable_data())[7] ^= 0x40; });
  const testing::CommandResult lied = testing::RunCommand(command + ".bad");
  EXPECT_EQ(lied.exit_code, 1) << lied.output;
  EXPECT_THAT(lied.output, HasSubstr("arrived with a different checksum"));
  EXPECT_THAT(lied.output, ::testing::Not(HasSubstr("verified")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("e.safetensors.bad")));
}

}  // namespace
}  // namespace moe_router
