#include "core/store/checksum.h"

#include "core/store/checksum_impl_internal.h"

namespace moe_router {
namespace {

// Debian's libxxhash is built for baseline x86-64 (SSE2); the AVX2 build of
// the same code hashes about twice as fast, which matters when a page-in
// reads from the page cache at memory speed.
const internal::Xxh3Impl& Impl() {
  static const internal::Xxh3Impl& impl =
#if defined(__x86_64__)
      __builtin_cpu_supports("avx2") ? internal::Xxh3Avx2() :
#endif
                                     internal::Xxh3Generic();
  return impl;
}

}  // namespace

uint64_t Xxh3(absl::Span<const uint8_t> bytes) { return Impl().hash(bytes.data(), bytes.size()); }

Xxh3Stream::Xxh3Stream() : state_(Impl().create()) {}

Xxh3Stream::~Xxh3Stream() { Impl().destroy(state_); }

void Xxh3Stream::Update(absl::Span<const uint8_t> bytes) {
  Impl().update(state_, bytes.data(), bytes.size());
}

uint64_t Xxh3Stream::Digest() const { return Impl().digest(state_); }

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
