#include "core/cache/changed_slots.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace moe_router {
namespace {

TEST(ChangedSlotsTest, EachMarkedSlotIsDrainedOnceUntilMarkedAgain) {
  ChangedSlots changed(8);
  changed.Mark(3);
  changed.Mark(5);
  changed.Mark(3);
  std::vector<size_t> drained;
  changed.Drain([&](size_t slot) { drained.push_back(slot); });
  EXPECT_EQ(drained, (std::vector<size_t>{3, 5}));
  drained.clear();
  changed.Drain([&](size_t slot) { drained.push_back(slot); });
  EXPECT_TRUE(drained.empty());
  // Every slot at once fills the ring exactly; it wraps around after.
  for (int round = 0; round < 3; ++round) {
    for (size_t s = 0; s < 8; ++s) changed.Mark(7 - s);
    changed.Drain([&](size_t slot) { drained.push_back(slot); });
    ASSERT_EQ(drained.size(), 8u);
    EXPECT_EQ(drained.front(), 7u);
    drained.clear();
  }
}

// Writers change a slot's state and mark it while the consumer drains: no
// change is lost, so after the writers stop and a last drain the consumer has
// read every slot's final state.
TEST(ChangedSlotsTest, NoChangeIsLostToConcurrentMarkers) {
  constexpr size_t kSlots = 64;
  ChangedSlots changed(kSlots);
  std::vector<std::atomic<uint64_t>> state(kSlots);
  std::vector<uint64_t> seen(kSlots, 0);
  std::atomic<int> writers_left{4};
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      for (uint64_t i = 0; i < 200000; ++i) {
        const size_t slot = (i * 7 + static_cast<uint64_t>(w) * 13) % kSlots;
        state[slot].fetch_add(1, std::memory_order_relaxed);
        changed.Mark(slot);
      }
      writers_left.fetch_sub(1);
    });
  }
  const auto read = [&](size_t slot) { seen[slot] = state[slot].load(std::memory_order_relaxed); };
  while (writers_left.load() > 0) changed.Drain(read);
  for (std::thread& t : writers) t.join();
  changed.Drain(read);
  for (size_t s = 0; s < kSlots; ++s) {
    EXPECT_EQ(seen[s], state[s].load()) << "slot " << s;
  }
}

}  // namespace
}  // namespace moe_router
