// TLS and mutual TLS on the data port, with a PKI generated at test time:
// the server answers only clients that trust it and, with a client CA, only
// clients holding a certificate that CA signed.
#include <grpcpp/grpcpp.h>

#include "client/client.h"
#include "core/base/file_io.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/testing/test_certificates.h"
#include "tests/testing/test_specs.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override { pki_ = testing::MakeTestCertificates(dir_.path()); }

  // A server on loopback with the given TLS files and one small model.
  std::unique_ptr<RouterServer> StartServer(const TlsFiles& tls,
                                            bool disable_model_management = false) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.health_listen = "127.0.0.1:0";
    options.tls = tls;
    options.disable_model_management = disable_model_management;
    auto server = RouterServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    EXPECT_TRUE((*server)->registry().Register(testing::SyntheticSpec("tiny", 2, 1000, 8)).ok());
    return *std::move(server);
  }

  // Routes one token through a client with `tls`; the call's status.
  absl::Status RouteWith(const RouterServer& server, const ClientTls& tls) {
    auto client = Client::Connect("127.0.0.1:" + std::to_string(server.port()), tls);
    if (!client.ok()) return client.status();
    auto routed = (*client)->Route("tiny", 0, std::vector<float>{0, 0, 9, 0, 0, 8, 0, 0});
    if (!routed.ok()) return routed.status();
    EXPECT_THAT(routed->experts(), ::testing::ElementsAre(2u, 5u));
    return absl::OkStatus();
  }

  // Registers and then unregisters a model through a client with `tls`.
  absl::Status ManageWith(const RouterServer& server, const ClientTls& tls) {
    auto client = Client::Connect("127.0.0.1:" + std::to_string(server.port()), tls);
    if (!client.ok()) return client.status();
    auto registered = (*client)->Register(testing::SyntheticSpec("extra", 2, 1000, 8));
    if (!registered.ok()) return registered.status();
    return (*client)->Unregister("extra");
  }

  TlsFiles ServerFiles(bool mutual) const {
    return {.cert = pki_.server_cert, .key = pki_.server_key, .client_ca = mutual ? pki_.ca : ""};
  }

  testing::TempDir dir_;
  testing::TestCertificates pki_;
};

TEST_F(TlsTest, ServesOnlyClientsThatTrustItsCertificate) {
  auto server = StartServer(ServerFiles(/*mutual=*/false));
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(RouteWith(*server, {.ca = pki_.ca}).ok());
  // The certificate names localhost too, and a name override reaches it by IP.
  EXPECT_TRUE(RouteWith(*server, {.ca = pki_.ca, .server_name = "localhost"}).ok());
  EXPECT_TRUE(absl::IsUnavailable(RouteWith(*server, {})));
  EXPECT_TRUE(absl::IsUnavailable(RouteWith(*server, {.ca = pki_.rogue_ca})));
  EXPECT_TRUE(absl::IsUnavailable(
      RouteWith(*server, {.ca = pki_.ca, .server_name = "not-the-server.example"})));
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateItsCaSigned) {
  auto server = StartServer(ServerFiles(/*mutual=*/true));
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(
      RouteWith(*server, {.ca = pki_.ca, .cert = pki_.client_cert, .key = pki_.client_key}).ok());
  EXPECT_TRUE(absl::IsUnavailable(RouteWith(*server, {.ca = pki_.ca})));
  EXPECT_TRUE(absl::IsUnavailable(RouteWith(
      *server, {.ca = pki_.ca, .cert = pki_.rogue_client_cert, .key = pki_.rogue_client_key})));
  // The model saw exactly the one authenticated call.
  EXPECT_EQ(server->registry().Find("tiny").value()->engine->Stats().metrics.total.routed_tokens,
            1u);
}

// With mutual TLS and an admin CA: every client certificate the client CA
// signed may route, only those the admin CA signed may manage models.
TEST_F(TlsTest, AdminCaAloneMayManageModelsUnderMutualTls) {
  TlsFiles files = ServerFiles(/*mutual=*/true);
  files.admin_client_ca = pki_.admin_ca;
  auto server = StartServer(files);
  ASSERT_NE(server, nullptr);
  const ClientTls worker = {.ca = pki_.ca, .cert = pki_.client_cert, .key = pki_.client_key};
  const ClientTls admin = {.ca = pki_.ca, .cert = pki_.admin_cert, .key = pki_.admin_key};
  EXPECT_TRUE(RouteWith(*server, worker).ok());
  const absl::Status refused = ManageWith(*server, worker);
  EXPECT_TRUE(absl::IsPermissionDenied(refused)) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("RegisterModel needs a client certificate signed by "
                                           "the admin CA (--admin_client_ca)"));
  const absl::Status managed = ManageWith(*server, admin);
  EXPECT_TRUE(managed.ok()) << managed;
  EXPECT_TRUE(absl::IsUnavailable(RouteWith(
      *server, {.ca = pki_.ca, .cert = pki_.rogue_client_cert, .key = pki_.rogue_client_key})));
  EXPECT_EQ(server->registry().List().size(), 1u);
}

// With TLS but no client CA, clients need no certificate to route, and an
// admin certificate to manage models.
TEST_F(TlsTest, AdminCaWithoutMutualTls) {
  TlsFiles files = ServerFiles(/*mutual=*/false);
  files.admin_client_ca = pki_.admin_ca;
  auto server = StartServer(files);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(RouteWith(*server, {.ca = pki_.ca}).ok());
  const absl::Status refused = ManageWith(*server, {.ca = pki_.ca});
  EXPECT_TRUE(absl::IsPermissionDenied(refused)) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("presented none"));
  EXPECT_TRUE(
      ManageWith(*server, {.ca = pki_.ca, .cert = pki_.admin_cert, .key = pki_.admin_key}).ok());
}

TEST_F(TlsTest, ModelManagementCanBeTurnedOff) {
  auto server = StartServer({}, /*disable_model_management=*/true);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(RouteWith(*server, {}).ok());
  const absl::Status refused = ManageWith(*server, {});
  EXPECT_TRUE(absl::IsPermissionDenied(refused)) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("--disable_model_management"));
  auto client = Client::Connect("127.0.0.1:" + std::to_string(server->port()), {});
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE(absl::IsPermissionDenied((*client)->Unregister("tiny")));
  EXPECT_TRUE(server->registry().Find("tiny").ok());
}

TEST(ListenAddressTest, LoopbackIsTellable) {
  for (const char* local : {"127.0.0.1:50051", "localhost:1", "[::1]:50051", "unix:/tmp/s"}) {
    EXPECT_TRUE(IsLoopback(local)) << local;
  }
  for (const char* exposed : {"0.0.0.0:50051", "[::]:50051", "10.0.0.5:1", "router.local:1"}) {
    EXPECT_FALSE(IsLoopback(exposed)) << exposed;
  }
}

TEST_F(TlsTest, HealthPortStaysPlaintextForProbes) {
  auto server = StartServer(ServerFiles(/*mutual=*/true));
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server->health_port()),
                                     grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("readiness");
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&context, request, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(TlsTest, BadTlsFilesAreClearErrors) {
  const auto start = [](const TlsFiles& tls) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.tls = tls;
    return RouterServer::Start(options).status();
  };
  absl::Status s = start({.cert = pki_.server_cert});
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(s.message(), HasSubstr("--tls_key"));
  s = start({.cert = pki_.server_cert, .key = dir_.File("absent.key")});
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(s.message(), HasSubstr("absent.key"));
  const std::string not_pem = dir_.File("server.csr.ext");
  ASSERT_TRUE(WriteFileAtomically(not_pem, "this is not a certificate").ok());
  s = start({.cert = not_pem, .key = pki_.server_key});
  EXPECT_THAT(s.message(), HasSubstr("not a PEM file"));
  s = start({.client_ca = pki_.ca});
  EXPECT_TRUE(absl::IsInvalidArgument(s));

  auto client = Client::Connect("localhost:1", {.cert = pki_.client_cert});
  EXPECT_TRUE(absl::IsInvalidArgument(client.status()));
  client = Client::Connect("localhost:1", {.ca = dir_.File("absent.pem")});
  EXPECT_THAT(client.status().message(), HasSubstr("absent.pem"));
}

TEST_F(TlsTest, CliSpeaksMutualTls) {
  auto server = StartServer(ServerFiles(/*mutual=*/true));
  ASSERT_NE(server, nullptr);
  const std::string base = std::string(MOE_ROUTER_CLI_PATH) +
                           " models --server 127.0.0.1:" + std::to_string(server->port()) +
                           " --tls_ca " + pki_.ca;
  const testing::CommandResult ok = testing::RunCommand(base + " --tls_cert " + pki_.client_cert +
                                                        " --tls_key " + pki_.client_key);
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_THAT(ok.output, HasSubstr("tiny"));
  const testing::CommandResult refused = testing::RunCommand(base);
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
}

}  // namespace
}  // namespace moe_router
