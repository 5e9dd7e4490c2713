#ifndef MOE_ROUTER_CORE_BASE_RESOURCE_NAME_H_
#define MOE_ROUTER_CORE_BASE_RESOURCE_NAME_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace moe_router {

/// Longest model or cache name.
inline constexpr size_t kMaxResourceNameLength = 128;

/// The one rule for names that callers choose (models, worker caches): they
/// become file names under --state_dir and metric label values, so 1 to 128
/// characters of [A-Za-z0-9._-], not starting with '.'. Otherwise
/// INVALID_ARGUMENT "<what> ... " stating the rule; a long name is quoted
/// cut short, so a hostile name cannot bloat the error.
absl::Status CheckResourceName(absl::string_view what, absl::string_view name);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_BASE_RESOURCE_NAME_H_
