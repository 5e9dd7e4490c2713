#include "core/store/synthetic_store.h"

#include "core/store/checksum.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

TEST(SyntheticStoreTest, DeterministicVerifiableExperts) {
  auto store = SyntheticStore::Create(
      {.num_layers = 2, .num_experts = 4, .variants = {{"Q4_K", 3000}, {"Q2_K", 1000}}});
  ASSERT_TRUE(store.ok());
  auto a = (*store)->Load({1, 3}, "Q4_K");
  auto b = (*store)->Load({1, 3}, "Q4_K");
  auto c = (*store)->Load({1, 2}, "Q4_K");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ((*a)->size, 3000u);
  EXPECT_EQ((*a)->checksum, (*b)->checksum);
  EXPECT_NE((*a)->checksum, (*c)->checksum);
  EXPECT_EQ(0, memcmp((*a)->bytes.get(), (*b)->bytes.get(), 3000));
  uint64_t total = 0;
  for (const TensorData& t : (*a)->tensors) {
    EXPECT_EQ(t.checksum, Xxh3((*a)->TensorBytes(t)));
    total += t.size;
  }
  EXPECT_EQ(total, 3000u);
  EXPECT_EQ((*store)->Info({0, 0}, "Q2_K")->bytes, 1000u);
  EXPECT_EQ((*store)->Precisions(), (std::vector<std::string>{"Q4_K", "Q2_K"}));
  EXPECT_TRUE(absl::IsNotFound((*store)->Load({2, 0}, "Q4_K").status()));
  EXPECT_TRUE(absl::IsNotFound((*store)->Info({0, 0}, "F16").status()));
}

// Experts differ page by page (a copy of another expert's page would pass
// its checksum), and two stores agree: workers and servers in different
// processes see the same bytes.
TEST(SyntheticStoreTest, ExpertsDifferInEveryPageAndAcrossStores) {
  const SyntheticStoreOptions options{
      .num_layers = 2, .num_experts = 2, .variants = {{"Q4_K", 5 * 4096}, {"Q2_K", 5 * 4096}}};
  auto store = SyntheticStore::Create(options);
  auto other = SyntheticStore::Create(options);
  ASSERT_TRUE(store.ok() && other.ok());
  auto a = (*store)->Load({0, 1}, "Q4_K");
  auto b = (*store)->Load({1, 0}, "Q4_K");
  auto c = (*store)->Load({0, 1}, "Q2_K");
  auto again = (*other)->Load({0, 1}, "Q4_K");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && again.ok());
  for (uint64_t page = 0; page < 5; ++page) {
    const uint8_t* pa = (*a)->bytes.get() + page * 4096;
    EXPECT_NE(0, memcmp(pa, (*b)->bytes.get() + page * 4096, 4096)) << "page " << page;
    EXPECT_NE(0, memcmp(pa, (*c)->bytes.get() + page * 4096, 4096)) << "page " << page;
  }
  EXPECT_EQ((*again)->checksum, (*a)->checksum);
}

TEST(SyntheticStoreTest, RejectsBadOptions) {
  EXPECT_FALSE(SyntheticStore::Create({.num_layers = 0}).ok());
  EXPECT_FALSE(SyntheticStore::Create({.variants = {}}).ok());
  EXPECT_FALSE(SyntheticStore::Create({.variants = {{"x", 2}}}).ok());
}

}  // namespace
}  // namespace moe_router
