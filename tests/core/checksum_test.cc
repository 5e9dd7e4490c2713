#include "core/checksum.h"

#include <xxhash.h>

#include "core/checksum_impl_internal.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

// Both builds must agree with Debian's libxxhash bit for bit, whole and
// streamed in odd chunks.
TEST(ChecksumTest, ImplementationsMatchLibxxhash) {
  std::vector<const internal::Xxh3Impl*> impls = {&internal::Xxh3Generic()};
  if (__builtin_cpu_supports("avx2")) impls.push_back(&internal::Xxh3Avx2());
  for (size_t size : {0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 100000, 1 << 20}) {
    const std::string data = testing::RandomBytes(size, size);
    const uint64_t want = XXH3_64bits(data.data(), data.size());
    EXPECT_EQ(Xxh3({reinterpret_cast<const uint8_t*>(data.data()), data.size()}), want);
    for (const internal::Xxh3Impl* impl : impls) {
      EXPECT_EQ(impl->hash(data.data(), data.size()), want) << size;
      void* state = impl->create();
      for (size_t off = 0; off < size; off += 777) {
        impl->update(state, data.data() + off, std::min<size_t>(777, size - off));
      }
      EXPECT_EQ(impl->digest(state), want) << size;
      impl->destroy(state);
    }
  }
}

TEST(ChecksumTest, ExpertChecksumCoversNamesAndOrder) {
  const uint64_t a = ExpertChecksum({{"w1", 1}, {"w2", 2}});
  EXPECT_NE(a, ExpertChecksum({{"w2", 2}, {"w1", 1}}));
  EXPECT_NE(a, ExpertChecksum({{"w1", 1}, {"w3", 2}}));
  EXPECT_NE(a, ExpertChecksum({{"w1", 1}, {"w2", 3}}));
  EXPECT_EQ(a, ExpertChecksum({{"w1", 1}, {"w2", 2}}));
}

}  // namespace
}  // namespace moe_router
