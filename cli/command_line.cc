#include "cli/command_line.h"

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe_router {
namespace {

// What Parse returns for --help: CommandUsage prints the usage on stdout and
// exits 0.
constexpr char kHelpRequested[] = "help requested";

bool IsHelpRequest(const absl::Status& s) {
  return s.code() == absl::StatusCode::kCancelled && s.message() == kHelpRequested;
}

}  // namespace

absl::StatusOr<CommandLine> CommandLine::Parse(const std::vector<std::string>& args,
                                               const std::vector<FlagSpec>& spec) {
  CommandLine out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") return absl::CancelledError(kHelpRequested);
    std::string name, value;
    if (arg.size() == 2 && arg[0] == '-' && absl::ascii_isalpha(arg[1])) {
      for (const FlagSpec& f : spec) {
        if (f.short_name == arg[1]) name = f.name;
      }
      if (name.empty()) return absl::InvalidArgumentError(absl::StrFormat("unknown flag %s", arg));
    } else if (arg.size() < 3 || arg.rfind("--", 0) != 0) {
      out.positional_.push_back(arg);
      continue;
    } else {
      name = arg.substr(2);
    }
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* flag = nullptr;
    for (const FlagSpec& f : spec) {
      if (f.name == name) flag = &f;
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("unknown flag --%s", name));
    }
    if (flag->takes_value && !inline_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrFormat("flag --%s needs a value", name));
      }
      value = args[++i];
    } else if (!flag->takes_value && inline_value) {
      return absl::InvalidArgumentError(absl::StrFormat("flag --%s takes no value", name));
    }
    if (!flag->repeatable && out.values_.count(name) > 0) {
      return absl::InvalidArgumentError(absl::StrFormat("flag --%s given twice", name));
    }
    out.values_[name].push_back(value);
  }
  return out;
}

std::string CommandLine::Value(const std::string& name, const std::string& fallback) const {
  const auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> CommandLine::Values(const std::string& name) const {
  const auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<double> CommandLine::Number(const std::string& name, double fallback) const {
  if (!Has(name)) return fallback;
  double v = 0;
  if (!absl::SimpleAtod(Value(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--%s expects a number, got '%s'", name, Value(name)));
  }
  return v;
}

absl::StatusOr<uint64_t> CommandLine::Count(const std::string& name, uint64_t fallback) const {
  if (!Has(name)) return fallback;
  uint64_t v = 0;
  if (!absl::SimpleAtoi(Value(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--%s expects a whole number, got '%s'", name, Value(name)));
  }
  return v;
}

std::string CommandLine::Help(const std::vector<FlagSpec>& spec) {
  std::string out;
  for (const FlagSpec& f : spec) {
    const std::string shown =
        absl::StrCat(f.short_name ? absl::StrFormat("-%c, ", f.short_name) : "", "--", f.name,
                     f.takes_value ? " VALUE" : "");
    absl::StrAppendFormat(&out, "  %-24s %s\n", shown, f.help);
  }
  return out;
}

int CommandError(const std::string& command, const absl::Status& status, int code) {
  std::fprintf(stderr, "moe-router %s: %s\n", command.c_str(),
               std::string(status.message()).c_str());
  return code;
}

int CommandUsage(const std::string& command, const std::string& synopsis,
                 const absl::Status& parse_error, const std::vector<FlagSpec>& flags) {
  const bool help = IsHelpRequest(parse_error);
  if (!parse_error.ok() && !help) CommandError(command, parse_error);
  std::fprintf(help ? stdout : stderr, "usage: moe-router %s %s\nflags:\n%s", command.c_str(),
               synopsis.c_str(), CommandLine::Help(flags).c_str());
  return help ? 0 : 2;
}

}  // namespace moe_router
