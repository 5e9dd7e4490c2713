#ifndef MOE_ROUTER_CORE_STORE_EXPERT_BYTES_H_
#define MOE_ROUTER_CORE_STORE_EXPERT_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <memory>

namespace moe_router {

/// Frees expert bytes: large buffers go back to a small pool for reuse or to
/// the OS, small ones to the heap.
struct ExpertBytesDeleter {
  size_t size = 0;
  void operator()(uint8_t* p) const;
};

/// The bytes of one expert.
using ExpertBytes = std::unique_ptr<uint8_t[], ExpertBytesDeleter>;

/// Uninitialised bytes for an expert of `size` bytes (at least 1).
///
/// Why not new[]: experts are large, loaded and evicted all the time, and
/// freed on other threads than the ones that allocated them. glibc's heap
/// then keeps tens of MiB of freed experts per arena, and resident memory
/// drifts far above the cache budget. Buffers of 256 KiB or more are mapped
/// directly instead, and a freed one is kept for the next expert of the same
/// size while the pool holds under kExpertBytesPoolLimit, else unmapped, so
/// resident memory stays within the budget plus that limit, and most loads
/// reuse pages that are already faulted in.
ExpertBytes AllocateExpertBytes(size_t size);

inline constexpr size_t kExpertBytesPoolLimit = size_t{16} << 20;

/// Bytes held by the pool, for tests and metrics.
size_t ExpertBytesPooled();

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_STORE_EXPERT_BYTES_H_
