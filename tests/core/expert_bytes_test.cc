#include "core/store/expert_bytes.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace moe_router {
namespace {

TEST(ExpertBytesTest, LargeBuffersAreReusedAndThePoolIsBounded) {
  constexpr size_t kSize = size_t{1} << 20;
  const size_t pooled_before = ExpertBytesPooled();
  uint8_t* first;
  {
    ExpertBytes a = AllocateExpertBytes(kSize);
    first = a.get();
    std::memset(a.get(), 0xab, kSize);  // every page is writable
  }
  EXPECT_EQ(ExpertBytesPooled(), pooled_before + kSize);
  ExpertBytes again = AllocateExpertBytes(kSize);
  EXPECT_EQ(again.get(), first);  // the freed buffer, not a new mapping
  EXPECT_EQ(ExpertBytesPooled(), pooled_before);

  // Freeing far more than the limit keeps at most the limit.
  std::vector<ExpertBytes> many;
  for (int i = 0; i < 40; ++i) many.push_back(AllocateExpertBytes(kSize));
  many.clear();
  EXPECT_LE(ExpertBytesPooled(), kExpertBytesPoolLimit);
  EXPECT_GE(ExpertBytesPooled(), kExpertBytesPoolLimit - kSize);
}

TEST(ExpertBytesTest, SmallAndEmptyBuffers) {
  ExpertBytes small = AllocateExpertBytes(3000);
  ASSERT_NE(small.get(), nullptr);
  std::memset(small.get(), 1, 3000);
  EXPECT_NE(AllocateExpertBytes(0).get(), nullptr);
}

}  // namespace
}  // namespace moe_router
