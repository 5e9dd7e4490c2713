#ifndef MOE_ROUTER_CORE_STORE_CHECKSUM_H_
#define MOE_ROUTER_CORE_STORE_CHECKSUM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace moe_router {

/// XXH3-64 of a byte range.
uint64_t Xxh3(absl::Span<const uint8_t> bytes);

/// Incremental XXH3-64, so a tensor is hashed chunk by chunk as it is read
/// (while the chunk is still in cache).
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void Update(absl::Span<const uint8_t> bytes);
  uint64_t Digest() const;

 private:
  void* state_;
};

/// The checksum of a whole expert: XXH3-64 over each tensor's name followed
/// by its 8-byte little-endian XXH3-64, in tensor order. It covers every byte
/// while hashing the data only once.
uint64_t ExpertChecksum(const std::vector<std::pair<std::string, uint64_t>>& tensors);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_STORE_CHECKSUM_H_
