#ifndef MOE_ROUTER_CORE_BASE_JSON_NUMBER_H_
#define MOE_ROUTER_CORE_BASE_JSON_NUMBER_H_

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace moe_router {

/// The one conversion of a number read from a file (a trace, a safetensors
/// header, a state file, an imported dump) to an integer: only a JSON
/// integer within T's range. A float (nlohmann keeps 1e30 or a 30-digit
/// integer as one, and narrowing it is undefined behaviour), a bool, a
/// string or a value out of range is INVALID_ARGUMENT naming `what` and the
/// value. nlohmann's get<T>() would truncate or convert silently.
template <typename T>
absl::StatusOr<T> JsonInteger(const nlohmann::json& j, absl::string_view what) {
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
  const auto out_of_range = [&] {
    std::string shown = j.dump();
    if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
    return absl::InvalidArgumentError(absl::StrFormat("%s must be an integer from %d to %d, got %s",
                                                      what, std::numeric_limits<T>::min(),
                                                      std::numeric_limits<T>::max(), shown));
  };
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) return out_of_range();
    return static_cast<T>(v);
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if constexpr (std::is_unsigned_v<T>) {
      if (v < 0) return out_of_range();
    } else {
      if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
        return out_of_range();
      }
    }
    return static_cast<T>(v);
  }
  return out_of_range();
}

/// The same for an array of integers; `what` names the array.
template <typename T>
absl::StatusOr<std::vector<T>> JsonIntegers(const nlohmann::json& j, absl::string_view what) {
  if (!j.is_array())
    return absl::InvalidArgumentError(absl::StrFormat("%s must be an array", what));
  std::vector<T> out;
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    auto v = JsonInteger<T>(j[i], absl::StrFormat("%s[%d]", what, i));
    if (!v.ok()) return v.status();
    out.push_back(*v);
  }
  return out;
}

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_BASE_JSON_NUMBER_H_
