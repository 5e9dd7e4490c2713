// The drain's bookkeeping on its own: admission stops when a drain begins,
// open streams are asked to end, and the wait for idle returns only when
// the last admitted call has left (or at its deadline, saying so).
#include "server/call_gate.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

// A stream that leaves the gate when asked to end, as a reactor's OnDone
// does; it counts how often it was asked.
class EndingStream : public DrainableStream {
 public:
  EndingStream(CallGate* gate, std::atomic<int>* asked) : gate_(gate), asked_(asked) {}
  void EndForDrain() override {
    ++*asked_;
    gate_->Leave(this);  // deletes this, after the drain has asked every stream
  }

 private:
  CallGate* gate_;
  std::atomic<int>* asked_;
};

TEST(CallGateTest, AwaitIdleWaitsForTheLastCallToLeave) {
  CallGate gate;
  ASSERT_TRUE(gate.Enter());
  ASSERT_TRUE(gate.Enter());
  gate.BeginDrain();
  EXPECT_FALSE(gate.Enter()) << "a call was admitted during the drain";
  EXPECT_EQ(gate.in_flight(), 2u);
  // Deadlines passing with calls open: false, and the calls still counted.
  EXPECT_FALSE(gate.AwaitIdle(absl::Now()));
  EXPECT_FALSE(gate.AwaitIdle(absl::Now() + absl::Milliseconds(50)));
  gate.Leave();
  EXPECT_FALSE(gate.AwaitIdle(absl::Now() + absl::Milliseconds(50)));
  // The last call leaves from another thread while the drain waits, with
  // a deadline far away: the wait ends when it leaves, true.
  absl::Notification waiting;
  std::atomic<bool> returned{false};
  bool idle = false;
  std::thread drain([&] {
    waiting.Notify();
    idle = gate.AwaitIdle(absl::InfiniteFuture());
    returned.store(true);
  });
  waiting.WaitForNotification();
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(returned.load()) << "the wait returned with a call open";
  gate.Leave();
  drain.join();
  EXPECT_TRUE(idle);
  EXPECT_EQ(gate.in_flight(), 0u);
  EXPECT_TRUE(gate.AwaitIdle(absl::Now()));
}

TEST(CallGateTest, ADrainAsksEveryOpenStreamToEnd) {
  CallGate gate;
  std::atomic<int> asked{0};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(gate.Enter(new EndingStream(&gate, &asked)));
  EXPECT_EQ(gate.in_flight(), 3u);
  gate.BeginDrain();
  EXPECT_EQ(asked.load(), 3);
  EXPECT_TRUE(gate.AwaitIdle(absl::Now()));
  std::atomic<int> late{0};
  auto* refused = new EndingStream(&gate, &late);
  EXPECT_FALSE(gate.Enter(refused));
  delete refused;
}

}  // namespace
}  // namespace moe_router
