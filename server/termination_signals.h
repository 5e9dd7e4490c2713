#ifndef MOE_ROUTER_SERVER_TERMINATION_SIGNALS_H_
#define MOE_ROUTER_SERVER_TERMINATION_SIGNALS_H_

#include <pthread.h>
#include <signal.h>

#include <cerrno>

namespace moe_router {

/// Blocks SIGTERM and SIGINT in the calling thread and in every thread it
/// starts afterwards, so they arrive only through WaitForTerminationSignal.
/// Call it first in main, before any thread starts. Header-only, for the
/// daemons of the server and of the benchmarks alike.
inline sigset_t BlockTerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

/// Waits for one of the signals BlockTerminationSignals blocked; its number.
inline int WaitForTerminationSignal(const sigset_t& signals) {
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  return signal_number;
}

/// Waits for one of them at most `timeout_ms` milliseconds; true if one
/// came.
inline bool WaitForTerminationSignalFor(const sigset_t& signals, long timeout_ms) {
  const timespec timeout{.tv_sec = timeout_ms / 1000, .tv_nsec = (timeout_ms % 1000) * 1000000};
  while (true) {
    if (sigtimedwait(&signals, nullptr, &timeout) > 0) return true;
    if (errno != EINTR) return false;  // EAGAIN: the time is up
  }
}

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_TERMINATION_SIGNALS_H_
