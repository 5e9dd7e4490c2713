#include "core/checksum.h"

#include <xxhash.h>

namespace moe_router {

uint64_t Xxh3(absl::Span<const uint8_t> bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

Xxh3Stream::Xxh3Stream() : state_(XXH3_createState()) {
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}

Xxh3Stream::~Xxh3Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void Xxh3Stream::Update(absl::Span<const uint8_t> bytes) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), bytes.data(), bytes.size());
}

uint64_t Xxh3Stream::Digest() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

uint64_t ExpertChecksum(const std::vector<std::pair<std::string, uint64_t>>& tensors) {
  Xxh3Stream stream;
  for (const auto& [name, digest] : tensors) {
    stream.Update({reinterpret_cast<const uint8_t*>(name.data()), name.size()});
    uint8_t le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(digest >> (8 * i));
    stream.Update({le, 8});
  }
  return stream.Digest();
}

}  // namespace moe_router
