#ifndef MOE_ROUTER_CORE_STORE_CHECKSUM_IMPL_INTERNAL_H_
#define MOE_ROUTER_CORE_STORE_CHECKSUM_IMPL_INTERNAL_H_

// One XXH3 implementation per instruction set, each compiled into its own
// file from xxhash.h with XXH_INLINE_ALL (so every xxhash function has
// internal linkage and no AVX2 code can leak into the generic build).

#include <cstddef>
#include <cstdint>

namespace moe_router::internal {

struct Xxh3Impl {
  uint64_t (*hash)(const void* data, size_t size);
  void* (*create)();
  void (*destroy)(void* state);
  void (*update)(void* state, const void* data, size_t size);
  uint64_t (*digest)(const void* state);
};

const Xxh3Impl& Xxh3Generic();
const Xxh3Impl& Xxh3Avx2();

}  // namespace moe_router::internal

#endif  // MOE_ROUTER_CORE_STORE_CHECKSUM_IMPL_INTERNAL_H_
