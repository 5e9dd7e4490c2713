#ifndef MOE_ROUTER_SERVER_ADMIN_ACCESS_H_
#define MOE_ROUTER_SERVER_ADMIN_ACCESS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace moe_router {

/// Who may call RegisterModel and UnregisterModel.
struct AdminAccessOptions {
  /// Nobody: models come from --config alone.
  bool disable_model_management = false;
  /// PEM CA bundle: only clients presenting a certificate it signed (over
  /// TLS). Empty: any client that may call the service.
  std::string admin_client_ca = {};
};

/// Decides whether a call may manage models; refusals are PERMISSION_DENIED
/// naming the flag that decides.
class AdminAccess {
 public:
  static absl::StatusOr<std::unique_ptr<AdminAccess>> Create(const AdminAccessOptions& options);
  ~AdminAccess();

  absl::Status Check(const grpc::ServerContextBase& context, const std::string& method) const;
  /// The admin CA's PEM ("" without one): the data port must ask clients
  /// for certificates it signed.
  const std::string& admin_ca_pem() const { return admin_ca_pem_; }

 private:
  struct Verifier;  // OpenSSL's certificate store, kept out of this header
  AdminAccess() = default;

  bool disabled_ = false;
  std::string admin_ca_pem_;
  std::unique_ptr<Verifier> verifier_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_ADMIN_ACCESS_H_
