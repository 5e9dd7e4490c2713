#include "core/store/checksum.h"

#include <xxhash.h>

#include "core/store/checksum_impl_internal.h"
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

// Known answers, computed outside this code base with xxhsum 0.8.1
// (`xxhsum -H3`) over files holding exactly these bytes, so a client in
// another language can check its implementation of the documented format:
// XXH3-64 over each tensor's name followed by its XXH3-64 as 8 little-endian
// bytes, in tensor (name) order.
TEST(ChecksumTest, ExpertChecksumKnownAnswer) {
  const auto xxh3 = [](const std::string& s) {
    return Xxh3({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
  };
  EXPECT_EQ(xxh3("abc"), 0x78af5f94892f3950ull);
  EXPECT_EQ(xxh3("hello, expert"), 0x9084680fcb485f1eull);
  const uint64_t expert = ExpertChecksum({{"model.layers.0.w1.weight", 0x78af5f94892f3950ull},
                                          {"model.layers.0.w2.weight", 0x9084680fcb485f1eull}});
  EXPECT_EQ(expert, 0x4a26c3a0a29659d3ull);
  // The same bytes laid out by hand and hashed by Debian's libxxhash.
  std::string wire = "model.layers.0.w1.weight";
  wire += std::string("\x50\x39\x2f\x89\x94\x5f\xaf\x78", 8);
  wire += "model.layers.0.w2.weight";
  wire += std::string("\x1e\x5f\x48\xcb\x0f\x68\x84\x90", 8);
  EXPECT_EQ(XXH3_64bits(wire.data(), wire.size()), expert);
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
