#include "core/base/resource_name.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace moe_router {
namespace {

bool Allowed(char c) { return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'; }

// The name as an error message may quote it: at most 40 characters, with
// anything unprintable escaped.
std::string Quoted(absl::string_view name) {
  constexpr size_t kShown = 40;
  std::string out;
  for (char c : name.substr(0, kShown)) {
    if (absl::ascii_isprint(c)) {
      out += c;
    } else {
      out += absl::StrFormat("\\x%02x", static_cast<unsigned char>(c));
    }
  }
  if (name.size() > kShown) out += absl::StrFormat("... (%d characters)", name.size());
  return out;
}

}  // namespace

absl::Status CheckResourceName(absl::string_view what, absl::string_view name) {
  bool ok = !name.empty() && name.size() <= kMaxResourceNameLength && name.front() != '.';
  for (char c : name) ok = ok && Allowed(c);
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s '%s' is not allowed: names are 1 to %d characters of A-Z a-z 0-9 . _ - and do not "
      "start with '.'",
      what, Quoted(name), kMaxResourceNameLength));
}

}  // namespace moe_router
