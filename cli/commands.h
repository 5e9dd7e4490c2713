#ifndef MOE_ROUTER_CLI_COMMANDS_H_
#define MOE_ROUTER_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace moe_router {

/// Subcommands of the moe-router CLI. Each takes the arguments after its
/// name and returns the process exit code (0 ok, 1 failure, 2 usage).
int DemoCommand(const std::vector<std::string>& args);
int ReplayCommand(const std::vector<std::string>& args);
int TracegenCommand(const std::vector<std::string>& args);
int TraceCommand(const std::vector<std::string>& args);
int SweepCommand(const std::vector<std::string>& args);
int IndexCommand(const std::vector<std::string>& args);
// Client commands, calling a running moe-routerd (--server ADDR).
int ModelsCommand(const std::vector<std::string>& args);
int RegisterCommand(const std::vector<std::string>& args);
int RouteCommand(const std::vector<std::string>& args);
int PrefetchCommand(const std::vector<std::string>& args);
int StatsCommand(const std::vector<std::string>& args);
int FetchCommand(const std::vector<std::string>& args);
int LoadgenCommand(const std::vector<std::string>& args);
int WorkerCommand(const std::vector<std::string>& args);
int SoakCommand(const std::vector<std::string>& args);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_COMMANDS_H_
