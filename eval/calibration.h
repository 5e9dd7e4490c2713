#ifndef MOE_ROUTER_EVAL_CALIBRATION_H_
#define MOE_ROUTER_EVAL_CALIBRATION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eval/trace.h"

namespace moe_router {

/// One figure of a synthetic trace next to the real trace's.
struct CalibrationRow {
  std::string metric;
  double generated = 0;
  double real = 0;
  double tolerance = 0;
  bool ok() const { return generated - real <= tolerance && real - generated <= tolerance; }
};

/// The figures a synthetic trace must share with a real one of the same
/// shape: LRU, LFU and Belady hit rates with half of each layer's experts
/// cached per layer and with half of all experts in one global cache
/// (within 0.03), and the consecutive-token overlap, first-choice recurrence
/// and skew (busiest expert's share over the mean share, averaged over
/// layers) statistics (within 0.05).
absl::StatusOr<std::vector<CalibrationRow>> CompareTraces(const RoutingTrace& generated,
                                                          const RoutingTrace& real);

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_CALIBRATION_H_
