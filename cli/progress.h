#ifndef MOE_ROUTER_CLI_PROGRESS_H_
#define MOE_ROUTER_CLI_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace moe_router {

/// A progress bar on stderr, drawn only when stderr is a terminal (so logs
/// and pipes stay clean), redrawn at most every 100 ms.
///
///   ProgressBar bar("replay", total);
///   for (...) bar.Update(++done);
///   bar.Finish();
class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total, FILE* out = stderr);
  ~ProgressBar() { Finish(); }
  void Update(uint64_t done);
  void Finish();
  bool enabled() const { return enabled_; }

 private:
  void Draw(uint64_t done);
  std::string label_;
  uint64_t total_;
  FILE* out_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_PROGRESS_H_
