#ifndef MOE_ROUTER_CLI_SERVER_CONNECTION_H_
#define MOE_ROUTER_CLI_SERVER_CONNECTION_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "cli/command_line.h"
#include "client/client.h"

namespace moe_router {

/// The flags of every CLI command that calls a server: --server and the
/// --tls_* files, appended to a command's own flags.
std::vector<FlagSpec> WithServerFlags(std::vector<FlagSpec> flags);

/// The --model flag of a command about one model: `help`, and that it
/// defaults to the embedded default's name.
FlagSpec ModelFlag(const std::string& help = "model");
/// The model --model names, or the embedded default's.
std::string ModelName(const CommandLine& cl);

/// The host part of --server ("localhost" by default).
std::string ServerHost(const CommandLine& cl);

/// A client for the server those flags name.
absl::StatusOr<std::unique_ptr<Client>> ConnectToServer(const CommandLine& cl);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_SERVER_CONNECTION_H_
