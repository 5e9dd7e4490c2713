#ifndef MOE_ROUTER_CORE_BASE_TYPES_H_
#define MOE_ROUTER_CORE_BASE_TYPES_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"

namespace moe_router {

/// One expert of one MoE layer: the unit that is routed to, cached and paged.
struct ExpertKey {
  uint32_t layer = 0;
  uint32_t expert = 0;

  friend bool operator==(const ExpertKey&, const ExpertKey&) = default;
  friend auto operator<=>(const ExpertKey&, const ExpertKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const ExpertKey& k) {
    return H::combine(std::move(h), k.layer, k.expert);
  }
  std::string ToString() const { return absl::StrFormat("L%u/E%u", layer, expert); }
};

/// Paging priority, most urgent first. The numeric value indexes queues and
/// metric arrays.
enum class Priority : uint8_t { kUrgent = 0, kNormal = 1, kPrefetch = 2 };
inline constexpr int kNumPriorities = 3;

inline const char* PriorityName(Priority p) {
  switch (p) {
    case Priority::kUrgent:
      return "urgent";
    case Priority::kNormal:
      return "normal";
    case Priority::kPrefetch:
      return "prefetch";
  }
  return "unknown";
}

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_BASE_TYPES_H_
