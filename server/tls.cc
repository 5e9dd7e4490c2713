#include "server/tls.h"

#include <grpcpp/security/server_credentials.h>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "core/base/file_io.h"

namespace moe_router {
namespace {

// Reads a PEM file; gRPC's own error for a non-PEM file is a log line and a
// server that fails to start, so check for a PEM block here and name the file.
absl::StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrFormat("--%s: %s", flag, text.status().message()));
  }
  if (!absl::StrContains(*text, "-----BEGIN ")) {
    return absl::InvalidArgumentError(absl::StrFormat("--%s: %s is not a PEM file", flag, path));
  }
  return text;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(
    const TlsFiles& files) {
  if (files.cert.empty() && files.key.empty() && files.client_ca.empty() &&
      files.admin_client_ca.empty()) {
    return grpc::InsecureServerCredentials();
  }
  if (files.cert.empty() || files.key.empty()) {
    return absl::InvalidArgumentError(
        "TLS (which --tls_client_ca and --admin_client_ca need) needs both --tls_cert and "
        "--tls_key");
  }
  auto cert = ReadPem("tls_cert", files.cert);
  if (!cert.ok()) return cert.status();
  auto key = ReadPem("tls_key", files.key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
  if (!files.client_ca.empty()) {
    auto ca = ReadPem("tls_client_ca", files.client_ca);
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *std::move(ca);
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  if (!files.admin_client_ca.empty()) {
    // Admin certificates pass the handshake too; without mutual TLS others
    // may present none.
    auto ca = ReadPem("admin_client_ca", files.admin_client_ca);
    if (!ca.ok()) return ca.status();
    options.pem_root_certs += "\n" + *ca;
    if (files.client_ca.empty()) {
      options.client_certificate_request = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
    }
  }
  return grpc::SslServerCredentials(options);
}

bool IsLoopback(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:")) return true;
  const size_t colon = listen.rfind(':');
  const std::string host = listen.substr(0, colon == std::string::npos ? listen.size() : colon);
  return host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.");
}

}  // namespace moe_router
