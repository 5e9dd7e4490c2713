#include "tests/testing/test_certificates.h"

#include <gtest/gtest.h>

#include "tests/testing/test_util.h"

namespace moe_router::testing {
namespace {

// EC P-256 keys: fast to generate, and supported by gRPC's TLS.
constexpr char kNewKey[] = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

// A self-signed CA certificate.
std::string MakeCa(const std::string& dir, const std::string& name) {
  return "openssl req -x509 " + std::string(kNewKey) + " -days 2 -subj /CN=" + name + " -keyout " +
         dir + "/" + name + ".key -out " + dir + "/" + name + ".pem";
}

// A certificate for `name` with the given extensions, signed by `ca`.
std::string Issue(const std::string& dir, const std::string& name, const std::string& common_name,
                  const std::string& extensions, const std::string& ca) {
  const std::string base = dir + "/" + name;
  return "openssl req " + std::string(kNewKey) + " -subj /CN=" + common_name + " -keyout " + base +
         ".key -out " + base + ".csr && printf '" + extensions + "' > " + base +
         ".ext && openssl x509 -req -days 2 -in " + base + ".csr -CA " + dir + "/" + ca +
         ".pem -CAkey " + dir + "/" + ca + ".key -CAcreateserial -extfile " + base + ".ext -out " +
         base + ".pem";
}

}  // namespace

TestCertificates MakeTestCertificates(const std::string& dir) {
  const std::string script =
      MakeCa(dir, "ca") + " && " + MakeCa(dir, "rogue_ca") + " && " + MakeCa(dir, "admin_ca") +
      " && " + Issue(dir, "admin", "operator", "extendedKeyUsage=clientAuth\\n", "admin_ca") +
      " && " +
      Issue(dir, "server", "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n", "ca") +
      " && " + Issue(dir, "client", "worker", "extendedKeyUsage=clientAuth\\n", "ca") + " && " +
      Issue(dir, "rogue_client", "intruder", "extendedKeyUsage=clientAuth\\n", "rogue_ca");
  const CommandResult result = RunCommand(script);
  if (result.exit_code != 0) {
    ADD_FAILURE() << "openssl failed: " << result.output;
    return {};
  }
  const auto pem = [&](const std::string& name) { return dir + "/" + name + ".pem"; };
  const auto key = [&](const std::string& name) { return dir + "/" + name + ".key"; };
  return {.ca = pem("ca"),
          .server_cert = pem("server"),
          .server_key = key("server"),
          .client_cert = pem("client"),
          .client_key = key("client"),
          .rogue_ca = pem("rogue_ca"),
          .rogue_client_cert = pem("rogue_client"),
          .rogue_client_key = key("rogue_client"),
          .admin_ca = pem("admin_ca"),
          .admin_cert = pem("admin"),
          .admin_key = key("admin")};
}

}  // namespace moe_router::testing
