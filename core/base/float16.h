#ifndef MOE_ROUTER_CORE_BASE_FLOAT16_H_
#define MOE_ROUTER_CORE_BASE_FLOAT16_H_

#include <cstdint>

namespace moe_router {

/// IEEE 754 half precision (binary16) to float, exactly (subnormals,
/// infinities and NaN included).
float HalfToFloat(uint16_t h);

/// bfloat16 (the top 16 bits of a float) to float, exactly.
inline float BFloat16ToFloat(uint16_t b) {
  const uint32_t bits = uint32_t{b} << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_BASE_FLOAT16_H_
