#include "eval/belady_policy.h"

#include <map>

#include "gtest/gtest.h"

namespace moe_router {
namespace {

// The entry needed furthest in the future ranks lowest (goes first); one
// never needed again ranks below all of them.
TEST(BeladyPolicyTest, RanksByNextUse) {
  const std::map<uint32_t, uint64_t> next = {{0, 12}, {1, 40}, {2, UINT64_MAX}, {3, 11}};
  uint64_t asked_now = 0;
  auto policy = MakeBeladyPolicy([&](ExpertKey key, uint64_t now) {
    asked_now = now;
    return next.at(key.expert);
  });
  EXPECT_EQ(policy->name(), "belady");
  CacheClock clock;
  clock.now = 10;
  const auto keep = [&](uint32_t expert) {
    return policy->Keep(EntryView{.key = {0, expert}}, clock);
  };
  EXPECT_LT(keep(2), keep(1));
  EXPECT_LT(keep(1), keep(0));
  EXPECT_LT(keep(0), keep(3));
  EXPECT_EQ(asked_now, 10u);
}

}  // namespace
}  // namespace moe_router
