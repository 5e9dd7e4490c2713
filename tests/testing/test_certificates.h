#ifndef MOE_ROUTER_TESTS_TESTING_TEST_CERTIFICATES_H_
#define MOE_ROUTER_TESTS_TESTING_TEST_CERTIFICATES_H_

#include <string>

namespace moe_router::testing {

/// PEM files of a throwaway PKI: a CA, a server certificate for localhost and
/// 127.0.0.1, a client certificate it signed, and a second, untrusted CA with
/// its own client certificate.
struct TestCertificates {
  std::string ca;
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  std::string rogue_ca;
  std::string rogue_client_cert, rogue_client_key;
  /// A separate CA for operators, and a client certificate it signed.
  std::string admin_ca;
  std::string admin_cert, admin_key;
};

/// Generates the PKI in `dir` with Debian's openssl (valid for two days);
/// fails the calling test (ADD_FAILURE) and returns empty paths on error.
TestCertificates MakeTestCertificates(const std::string& dir);

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_TEST_CERTIFICATES_H_
