#ifndef MOE_ROUTER_SERVER_MEMORY_LIMIT_H_
#define MOE_ROUTER_SERVER_MEMORY_LIMIT_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace moe_router {

/// What the server keeps for itself beyond what models reserve: gRPC's
/// buffers (capped by a resource quota of half of it), threads, requests
/// in flight. A container's memory limit is --memory_limit plus this.
inline constexpr uint64_t kServerHeadroomBytes = uint64_t{512} << 20;

/// The memory models may reserve when --memory_limit is not given: the
/// cgroup's limit (v2 memory.max, v1 memory.limit_in_bytes) where one is
/// set, else physical memory; less the headroom.
struct MemoryLimit {
  uint64_t bytes = 0;
  std::string source;  // "cgroup /sys/fs/cgroup/memory.max", "physical memory"
};
MemoryLimit DefaultMemoryLimit();
/// The same from a cgroup root and physical memory given (for tests).
MemoryLimit MemoryLimitFrom(const std::string& cgroup_root, uint64_t physical_bytes);

/// A byte count for flags: "512", "64M", "20GiB", "256Mi", "1.5G" (K, M, G
/// and T are binary multiples, with or without "iB" or Kubernetes' "i").
struct ByteSize {
  uint64_t bytes = 0;
};
bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error);
std::string AbslUnparseFlag(ByteSize size);

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_MEMORY_LIMIT_H_
