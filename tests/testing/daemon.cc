#include "tests/testing/daemon.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace moe_router::testing {

Daemon::Daemon(const std::string& path, const std::vector<std::string>& args, bool wait_for_port) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  pid_ = fork();
  if (pid_ == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    std::vector<char*> argv = {const_cast<char*>(path.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  close(fds[1]);
  err_ = fds[0];
  if (!wait_for_port) return;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::string line;
  while (port_ == 0 && ReadLine(deadline, &line)) {
    std::sscanf(line.c_str(), "moe-routerd: health on port %d", &health_port_);
    std::sscanf(line.c_str(), "moe-routerd: metrics on port %d", &metrics_port_);
    std::sscanf(line.c_str(), "moe-routerd: listening on port %d", &port_);
  }
}

Daemon::~Daemon() {
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (err_ >= 0) close(err_);
}

bool Daemon::ReadUntil(const std::string& text, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string line;
  while (ReadLine(deadline, &line)) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

void Daemon::ReadAvailable() {
  std::string line;
  while (ReadLine(absl::Now(), &line)) {
  }
}

std::optional<int> Daemon::WaitForExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  do {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      return status;
    }
    absl::SleepFor(absl::Milliseconds(10));
  } while (absl::Now() < deadline);
  return std::nullopt;
}

// Reads the pipe directly: stdio buffering would hide buffered lines from
// poll().
bool Daemon::ReadLine(absl::Time deadline, std::string* line) {
  size_t end;
  while ((end = pending_.find('\n')) == std::string::npos) {
    pollfd p{.fd = err_, .events = POLLIN, .revents = 0};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    char buf[512];
    // Past the deadline it still takes what is there already.
    if (ms < 0 || poll(&p, 1, ms) != 1) return false;
    const ssize_t n = read(err_, buf, sizeof buf);
    if (n <= 0) return false;
    pending_.append(buf, static_cast<size_t>(n));
  }
  *line = pending_.substr(0, end);
  pending_.erase(0, end + 1);
  log_ += *line + "\n";
  return true;
}

}  // namespace moe_router::testing
