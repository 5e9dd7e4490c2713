#ifndef MOE_ROUTER_TESTS_TESTING_DAEMON_H_
#define MOE_ROUTER_TESTS_TESTING_DAEMON_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace moe_router::testing {

/// A child process (moe-routerd, or HAProxy) whose stderr the test reads.
/// The destructor kills it if it still runs, so a failed test never leaves
/// it behind or hangs on it.
class Daemon {
 public:
  /// Starts `path` with `args`. For moe-routerd, reads stderr up to its port
  /// line (30 s at most), taking the ports it prints; for another program
  /// pass `wait_for_port = false`.
  Daemon(const std::string& path, const std::vector<std::string>& args, bool wait_for_port = true);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  int port() const { return port_; }
  int health_port() const { return health_port_; }
  int metrics_port() const { return metrics_port_; }
  /// What it printed so far (ReadUntil reads more).
  const std::string& log() const { return log_; }
  pid_t pid() const { return pid_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  /// Reads stderr until a line containing `text`, its end, or `timeout`;
  /// whether the line came.
  bool ReadUntil(const std::string& text, absl::Duration timeout);
  /// Reads the whole lines it has printed so far, without waiting.
  void ReadAvailable();
  /// The wait status once the process exits, or nullopt if it is still
  /// running after `timeout` (the destructor then kills it).
  std::optional<int> WaitForExit(absl::Duration timeout);

 private:
  bool ReadLine(absl::Time deadline, std::string* line);

  pid_t pid_ = -1;
  bool exited_ = false;
  int port_ = 0;
  int health_port_ = 0;
  int metrics_port_ = 0;
  int err_ = -1;
  std::string pending_;
  std::string log_;
};

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_DAEMON_H_
