#include "server/admin_access.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "core/base/file_io.h"

namespace moe_router {

struct AdminAccess::Verifier {
  X509_STORE* store = X509_STORE_new();
  ~Verifier() { X509_STORE_free(store); }
};

namespace {

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Deleter {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct StoreCtxDeleter {
  void operator()(X509_STORE_CTX* ctx) const { X509_STORE_CTX_free(ctx); }
};

// A read-only BIO over `pem`, which must outlive it.
std::unique_ptr<BIO, BioDeleter> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioDeleter>(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

}  // namespace

absl::StatusOr<std::unique_ptr<AdminAccess>> AdminAccess::Create(
    const AdminAccessOptions& options) {
  auto access = std::unique_ptr<AdminAccess>(new AdminAccess());
  access->disabled_ = options.disable_model_management;
  if (options.admin_client_ca.empty()) return access;
  absl::StatusOr<std::string> pem = ReadFile(options.admin_client_ca);
  if (!pem.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--admin_client_ca: %s", pem.status().message()));
  }
  access->verifier_ = std::make_unique<Verifier>();
  auto bio = MemoryBio(*pem);
  int loaded = 0;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(access->verifier_->store, cert);
    X509_free(cert);
    ++loaded;
  }
  if (loaded == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--admin_client_ca: %s holds no PEM certificate", options.admin_client_ca));
  }
  access->admin_ca_pem_ = *std::move(pem);
  return access;
}

AdminAccess::~AdminAccess() = default;

absl::Status AdminAccess::Check(const grpc::ServerContextBase& context,
                                const std::string& method) const {
  if (disabled_) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s: model management is turned off on this server (--disable_model_management); its "
        "models come from its --config",
        method));
  }
  if (verifier_ == nullptr) return absl::OkStatus();
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  const std::vector<grpc::string_ref> pems =
      auth != nullptr ? auth->FindPropertyValues("x509_pem_cert") : std::vector<grpc::string_ref>{};
  if (pems.empty()) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s needs a client certificate signed by the admin CA (--admin_client_ca); this call "
        "presented none",
        method));
  }
  const std::string pem(pems.front().data(), pems.front().size());
  auto bio = MemoryBio(pem);  // reads `pem` in place
  std::unique_ptr<X509, X509Deleter> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  std::unique_ptr<X509_STORE_CTX, StoreCtxDeleter> ctx(X509_STORE_CTX_new());
  const bool verified =
      cert != nullptr && ctx != nullptr &&
      X509_STORE_CTX_init(ctx.get(), verifier_->store, cert.get(), nullptr) == 1 &&
      X509_verify_cert(ctx.get()) == 1;
  if (!verified) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s needs a client certificate signed by the admin CA (--admin_client_ca); this call's "
        "certificate was not: %s",
        method,
        ctx != nullptr ? X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()))
                       : "unreadable"));
  }
  return absl::OkStatus();
}

}  // namespace moe_router
