#ifndef MOE_ROUTER_CORE_ROUTING_TOP_N_INTERNAL_H_
#define MOE_ROUTER_CORE_ROUTING_TOP_N_INTERNAL_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace moe_router::internal {

/// Indices of the n largest of value(i) for i in [0, count), largest first,
/// ties to the lower index. Indices whose value is not above `floor` are
/// skipped. Off the hot path: O(count log n).
template <typename ValueFn>
std::vector<uint32_t> TopN(uint32_t count, uint32_t n, ValueFn value, double floor = -1e300) {
  std::vector<uint32_t> ids;
  ids.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    if (value(i) > floor) ids.push_back(i);
  }
  const auto better = [&](uint32_t a, uint32_t b) {
    const double va = value(a), vb = value(b);
    return va > vb || (va == vb && a < b);
  };
  const size_t keep = std::min<size_t>(n, ids.size());
  std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), better);
  ids.resize(keep);
  return ids;
}

}  // namespace moe_router::internal

#endif  // MOE_ROUTER_CORE_ROUTING_TOP_N_INTERNAL_H_
