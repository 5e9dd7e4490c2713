#ifndef MOE_ROUTER_CORE_MODEL_PRECISION_H_
#define MOE_ROUTER_CORE_MODEL_PRECISION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace moe_router {

/// How busy an expert is, which decides the precision it is paged in at:
/// busy experts keep more bits, rarely used ones cost less memory.
enum class PrecisionClass : uint8_t { kHot = 0, kWarm = 1, kCold = 2 };
inline constexpr int kNumPrecisionClasses = 3;
const char* PrecisionClassName(PrecisionClass c);

struct PrecisionConfig {
  /// Activation count as a fraction of the layer's busiest expert at which an
  /// expert is hot (>= hot_threshold) or warm (>= warm_threshold); else cold.
  double hot_threshold = 0.9;
  double warm_threshold = 0.3;
  std::string hot_precision = "Q4_K";
  std::string warm_precision = "Q3_K";
  std::string cold_precision = "Q2_K";
  /// Until a layer has routed this many tokens every expert counts as hot,
  /// so a cold start does not page everything at the lowest precision.
  uint64_t warmup_tokens = 256;

  absl::Status Validate() const;
  PrecisionClass Classify(double frequency_ratio, uint64_t layer_tokens) const;
  const std::string& PrecisionOf(PrecisionClass c) const;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_MODEL_PRECISION_H_
