// A progress line for long commands: live (carriage return) on a terminal, a line every 10 s in a log,
// and always the final state once.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace moe::cli {

class ProgressLine {
 public:
  ProgressLine(std::string label, bool quiet) : label_(std::move(label)), quiet_(quiet), tty_(isatty(STDERR_FILENO)) {}

  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

  // `frac` of the work is done; `what` says where (e.g. "tensor 12/40").
  void update(double frac, const std::string& what) {
    if (quiet_ || done_) return;
    const double s = seconds();
    if (frac < 1.0 && s - last_ < (tty_ ? 0.5 : 10.0)) return;
    done_ = frac >= 1.0;
    last_ = s;
    const double eta = frac > 0 ? s * (1 - frac) / frac : 0;
    constexpr int kWidth = 24;
    std::string bar(kWidth, ' ');
    for (int i = 0; i < static_cast<int>(frac * kWidth + 0.5) && i < kWidth; ++i) bar[i] = '=';
    std::fprintf(stderr, "%s%s [%s] %3.0f%% %s  %.0fs, eta %.0fs   %s", tty_ ? "\r" : "", label_.c_str(), bar.c_str(),
                 100 * frac, what.c_str(), s, eta, tty_ ? "" : "\n");
    if (done_ && tty_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  std::string label_;
  bool quiet_, tty_;
  bool done_ = false;
  double last_ = -1e9;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace moe::cli
