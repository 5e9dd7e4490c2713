#ifndef MOE_ROUTER_TESTS_TESTING_TCP_RELAY_H_
#define MOE_ROUTER_TESTS_TESTING_TCP_RELAY_H_

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace moe_router::testing {

/// A TCP relay on 127.0.0.1:0 to a local port, for breaking a client's
/// connections while the server lives on: it can swallow what either side
/// sends (the other never sees it) and cut every open connection.
class TcpRelay {
 public:
  explicit TcpRelay(int target_port);
  ~TcpRelay();
  TcpRelay(const TcpRelay&) = delete;
  TcpRelay& operator=(const TcpRelay&) = delete;

  int port() const { return port_; }
  /// While set, the server's bytes (replies) or the client's (requests)
  /// are dropped instead of forwarded.
  void SwallowReplies(bool swallow) { swallow_replies_.store(swallow); }
  void SwallowRequests(bool swallow) { swallow_requests_.store(swallow); }
  /// Closes every open connection (both sides see it broken) and stops
  /// swallowing; later connections are relayed as usual.
  void CutAll();

 private:
  struct Connection {
    int client = -1;
    int server = -1;
    std::thread pump;
  };
  void Accept();
  void Pump(Connection* c);

  const int target_port_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> swallow_replies_{false};
  std::atomic<bool> swallow_requests_{false};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_TCP_RELAY_H_
