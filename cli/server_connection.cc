#include "cli/server_connection.h"

#include "core/engine/defaults.h"

namespace moe_router {

FlagSpec ModelFlag(const std::string& help) {
  return {"model", true, false, help + " (default " + kDefaultModelName + ")"};
}

std::string ModelName(const CommandLine& cl) { return cl.Value("model", kDefaultModelName); }

std::vector<FlagSpec> WithServerFlags(std::vector<FlagSpec> flags) {
  flags.push_back({"server", true, false, "moe-routerd address (default localhost:50051)"});
  flags.push_back({"tls_ca", true, false, "PEM CA that signed the server's certificate (TLS)"});
  flags.push_back({"tls_cert", true, false, "PEM client certificate (mutual TLS)"});
  flags.push_back({"tls_key", true, false, "PEM key of --tls_cert"});
  flags.push_back({"tls_server_name", true, false,
                   "name to check the server's certificate against (default: the host)"});
  return flags;
}

std::string ServerHost(const CommandLine& cl) {
  const std::string server = cl.Value("server", "localhost:50051");
  const size_t colon = server.rfind(':');
  std::string host = server.substr(0, colon == std::string::npos ? server.size() : colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return host;
}

absl::StatusOr<std::unique_ptr<Client>> ConnectToServer(const CommandLine& cl) {
  return Client::Connect(cl.Value("server", "localhost:50051"),
                         {.ca = cl.Value("tls_ca"),
                          .cert = cl.Value("tls_cert"),
                          .key = cl.Value("tls_key"),
                          .server_name = cl.Value("tls_server_name")});
}

}  // namespace moe_router
