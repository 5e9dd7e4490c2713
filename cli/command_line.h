#ifndef MOE_ROUTER_CLI_COMMAND_LINE_H_
#define MOE_ROUTER_CLI_COMMAND_LINE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe_router {

/// A flag a subcommand accepts.
struct FlagSpec {
  std::string name;  // without dashes
  bool takes_value = true;
  bool repeatable = false;
  std::string help;
  char short_name = 0;  // e.g. 'o' for -o; 0: none
};

/// Parsed arguments of one subcommand: --name value, --name=value, bare
/// --switch, and positionals. Unknown flags are errors naming them.
class CommandLine {
 public:
  static absl::StatusOr<CommandLine> Parse(const std::vector<std::string>& args,
                                           const std::vector<FlagSpec>& spec);

  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Value(const std::string& name, const std::string& fallback = "") const;
  std::vector<std::string> Values(const std::string& name) const;
  absl::StatusOr<double> Number(const std::string& name, double fallback) const;
  absl::StatusOr<uint64_t> Count(const std::string& name, uint64_t fallback) const;

  /// "  --name VALUE  help" lines for usage texts.
  static std::string Help(const std::vector<FlagSpec>& spec);

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::vector<std::string>> values_;
};

/// Prints "moe-router COMMAND: message" to stderr; returns `code`.
int CommandError(const std::string& command, const absl::Status& status, int code = 1);

/// Prints the parse error (if any), "usage: moe-router COMMAND SYNOPSIS" and
/// the flags to stderr; returns 2.
int CommandUsage(const std::string& command, const std::string& synopsis,
                 const absl::Status& parse_error, const std::vector<FlagSpec>& flags);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_COMMAND_LINE_H_
