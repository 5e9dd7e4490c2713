#include "cli/progress.h"

#include <unistd.h>

#include <algorithm>

namespace moe_router {

ProgressBar::ProgressBar(std::string label, uint64_t total, FILE* out)
    : label_(std::move(label)),
      total_(std::max<uint64_t>(total, 1)),
      out_(out),
      enabled_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::seconds(1)) {}

void ProgressBar::Update(uint64_t done) {
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100) && done < total_) return;
  last_draw_ = now;
  Draw(done);
}

void ProgressBar::Draw(uint64_t done) {
  constexpr int kWidth = 30;
  const double fraction = std::min(1.0, static_cast<double>(done) / total_);
  const int filled = static_cast<int>(fraction * kWidth);
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = fraction > 0 ? elapsed / fraction - elapsed : 0;
  std::fprintf(out_, "\r%s [%.*s%*s] %5.1f%% %llu/%llu eta %.0fs ", label_.c_str(), filled,
               "##############################", kWidth - filled, "", 100 * fraction,
               static_cast<unsigned long long>(done), static_cast<unsigned long long>(total_), eta);
  std::fflush(out_);
}

void ProgressBar::Finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  Draw(total_);
  std::fputc('\n', out_);
  std::fflush(out_);
}

}  // namespace moe_router
