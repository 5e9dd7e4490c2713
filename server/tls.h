#ifndef MOE_ROUTER_SERVER_TLS_H_
#define MOE_ROUTER_SERVER_TLS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace moe_router {

/// PEM files of the data port's TLS. All empty: plaintext. cert and key: TLS.
/// With client_ca too: mutual TLS, clients must present a certificate that
/// client_ca signed. With admin_client_ca, clients may present one it
/// signed instead (required for model management, see AdminAccess).
struct TlsFiles {
  std::string cert{};
  std::string key{};
  std::string client_ca{};
  std::string admin_client_ca{};
};

/// Credentials for the data port. Missing or unreadable files, a key without
/// its certificate, or a client CA without a server certificate are
/// INVALID_ARGUMENT naming the flag or file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(
    const TlsFiles& files);

/// Whether a listen address ("host:port", "[::1]:port", "unix:path") is
/// reachable from this machine only, so plaintext on it is not exposed.
bool IsLoopback(const std::string& listen);

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_TLS_H_
