#include "core/model/precision.h"

#include "absl/strings/str_format.h"

namespace moe_router {

const char* PrecisionClassName(PrecisionClass c) {
  switch (c) {
    case PrecisionClass::kHot:
      return "hot";
    case PrecisionClass::kWarm:
      return "warm";
    case PrecisionClass::kCold:
      return "cold";
  }
  return "unknown";
}

absl::Status PrecisionConfig::Validate() const {
  if (!(warm_threshold >= 0 && warm_threshold <= hot_threshold && hot_threshold <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "precision thresholds must satisfy 0 <= warm_threshold (%g) <= hot_threshold (%g) "
        "<= 1",
        warm_threshold, hot_threshold));
  }
  if (hot_precision.empty() || warm_precision.empty() || cold_precision.empty()) {
    return absl::InvalidArgumentError("precision names must not be empty");
  }
  return absl::OkStatus();
}

PrecisionClass PrecisionConfig::Classify(double frequency_ratio, uint64_t layer_tokens) const {
  if (layer_tokens < warmup_tokens || frequency_ratio >= hot_threshold) {
    return PrecisionClass::kHot;
  }
  return frequency_ratio >= warm_threshold ? PrecisionClass::kWarm : PrecisionClass::kCold;
}

const std::string& PrecisionConfig::PrecisionOf(PrecisionClass c) const {
  switch (c) {
    case PrecisionClass::kHot:
      return hot_precision;
    case PrecisionClass::kWarm:
      return warm_precision;
    case PrecisionClass::kCold:
      return cold_precision;
  }
  return hot_precision;
}

}  // namespace moe_router
