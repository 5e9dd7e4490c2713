#include "core/synthetic_store.h"

#include "core/checksum.h"
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

TEST(SyntheticStoreTest, RejectsBadOptions) {
  EXPECT_FALSE(SyntheticStore::Create({.num_layers = 0}).ok());
  EXPECT_FALSE(SyntheticStore::Create({.variants = {}}).ok());
  EXPECT_FALSE(SyntheticStore::Create({.variants = {{"x", 2}}}).ok());
}

}  // namespace
}  // namespace moe_router
