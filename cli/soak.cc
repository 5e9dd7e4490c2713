#include "cli/soak.h"

#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/http_get.h"

namespace moe_router {
namespace {

constexpr size_t kFailureSamples = 5;
constexpr double kMiB = 1 << 20;

class Soak {
 public:
  Soak(Client& client, const SoakOptions& options, const v1::ModelSpec& spec)
      : client_(client), options_(options), spec_(spec), start_(absl::Now()) {}

  SoakReport Run(const std::function<void(absl::Duration)>& progress) {
    std::vector<std::thread> threads;
    for (uint32_t w = 0; w < options_.workers; ++w) threads.emplace_back([this, w] { Work(w); });
    if (options_.churn) threads.emplace_back([this] { Churn(); });
    const absl::Time end = start_ + options_.duration;
    absl::Time next_progress = start_;
    while (absl::Now() < end) {
      Check();
      if (progress != nullptr && absl::Now() >= next_progress) {
        progress(absl::Now() - start_);
        next_progress += absl::Seconds(1);
      }
      done_.WaitForNotificationWithTimeout(absl::Milliseconds(500));
    }
    done_.Notify();
    for (std::thread& t : threads) t.join();
    Check();
    absl::MutexLock lock(&mu_);
    report_.elapsed = absl::Now() - start_;
    FitResidentMemory();
    return report_;
  }

 private:
  std::string CacheName(uint32_t worker) const {
    return absl::StrCat("soak-", getpid(), "-", worker);
  }
  uint64_t CacheBytes() const {
    return options_.cache_bytes != 0 ? options_.cache_bytes : spec_.budget_bytes() / 4;
  }

  void Record(const std::string& kind, const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    ++report_.calls[kind];
    if (status.ok()) return;
    if (absl::IsDeadlineExceeded(status)) {
      ++report_.deadline_exceeded;
      return;
    }
    ++report_.failures;
    if (report_.failure_samples.size() < kFailureSamples) {
      report_.failure_samples.push_back(absl::StrCat(kind, ": ", status.ToString()));
    }
  }

  // One inference worker: every layer in turn, with its own cache, a
  // prefetch for the next layer now and then, and an expert fetched.
  void Work(uint32_t worker) {
    const std::string cache = CacheName(worker);
    Record("open_cache", client_.OpenCache(spec_.name(), cache, CacheBytes()).status());
    std::mt19937_64 rng(options_.seed * 1000 + worker);
    std::normal_distribution<float> logit(0.0f, 2.0f);
    std::vector<float> logits(size_t{options_.batch_tokens} * spec_.num_experts());
    for (uint64_t step = 0; !done_.HasBeenNotified(); ++step) {
      const uint32_t layer = static_cast<uint32_t>(step % spec_.num_layers());
      for (float& l : logits) l = logit(rng);
      Record("route", client_.Route(spec_.name(), layer, logits, cache).status());
      if (step % 4 == 0) {
        v1::PrefetchRequest request;
        request.set_model(spec_.name());
        request.set_layer((layer + 1) % spec_.num_layers());
        request.set_budget(2);
        request.set_cache(cache);
        Record("prefetch", client_.Prefetch(request).status());
      }
      if (step % 16 == 0) {
        Record("fetch", client_
                            .Fetch(spec_.name(), static_cast<uint32_t>(rng() % spec_.num_layers()),
                                   static_cast<uint32_t>(rng() % spec_.num_experts()))
                            .status());
      }
    }
    Record("close_cache", client_.CloseCache(spec_.name(), cache));
  }

  // A scratch model registered, used and removed over and over.
  void Churn() {
    v1::ModelSpec scratch;
    scratch.set_name(absl::StrCat("soak-churn-", getpid()));
    scratch.set_num_layers(4);
    scratch.set_num_experts(8);
    scratch.set_top_k(2);
    scratch.set_budget_bytes(16 * 4096);
    scratch.mutable_synthetic()->set_expert_bytes(4096);
    const std::vector<float> logits(8, 1.0f);
    while (!done_.HasBeenNotified()) {
      Record("register", client_.Register(scratch).status());
      Record("route_scratch", client_.Route(scratch.name(), 0, logits).status());
      Record("unregister", client_.Unregister(scratch.name()));
    }
  }

  // The invariants, as GetModelStats and /metrics show them now.
  void Check() {
    std::vector<std::string> broken;
    uint64_t queued = 0;
    auto stats = client_.Stats(spec_.name());
    if (stats.ok()) {
      if (stats->resident_bytes() + stats->loading_bytes() > stats->budget_bytes() ||
          stats->peak_bytes() > stats->budget_bytes()) {
        broken.push_back(absl::StrFormat(
            "server cache: %d resident + %d loading bytes (peak %d) over its budget of %d",
            stats->resident_bytes(), stats->loading_bytes(), stats->peak_bytes(),
            stats->budget_bytes()));
      }
      queued = stats->paging_queue_depth();
      // Duplicates join a queued request, so at most one per expert waits.
      const uint64_t experts = uint64_t{spec_.num_layers()} * spec_.num_experts();
      if (queued > experts) {
        broken.push_back(
            absl::StrFormat("paging queue holds %d requests for %d experts", queued, experts));
      }
    }
    Record("stats", stats.status());
    for (uint32_t w = 0; w < options_.workers; ++w) {
      auto cache = client_.Stats(spec_.name(), CacheName(w));
      // Not open yet, or closed at the end: nothing to check.
      if (cache.ok() && cache->resident_bytes() > cache->budget_bytes()) {
        broken.push_back(absl::StrFormat("worker cache %s: %d resident bytes over its budget of %d",
                                         CacheName(w), cache->resident_bytes(),
                                         cache->budget_bytes()));
      }
    }
    double rss = -1;
    if (options_.metrics_port != 0) {
      auto page = HttpGet(options_.metrics_host, options_.metrics_port, "/metrics");
      auto value = page.ok() ? MetricValue(*page, "process_resident_memory_bytes") : page.status();
      Record("metrics", value.status());
      if (value.ok()) rss = *value;
    }
    absl::MutexLock lock(&mu_);
    ++report_.checks;
    report_.max_queue_depth = std::max(report_.max_queue_depth, queued);
    for (std::string& b : broken) {
      if (report_.violations.size() < kFailureSamples) report_.violations.push_back(std::move(b));
    }
    if (rss >= 0) rss_.push_back({absl::ToDoubleSeconds(absl::Now() - start_), rss / kMiB});
  }

  void FitResidentMemory() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const double warmup = absl::ToDoubleSeconds(options_.warmup);
    double n = 0, st = 0, sr = 0, stt = 0, str = 0;
    for (const auto& [t, rss] : rss_) {
      if (t < warmup) continue;
      if (n == 0) report_.rss_after_warmup_mib = rss;
      n += 1;
      st += t;
      sr += rss;
      stt += t * t;
      str += t * rss;
      report_.rss_end_mib = rss;
    }
    report_.rss_samples = static_cast<uint64_t>(n);
    const double denominator = n * stt - st * st;
    if (n >= 2 && denominator > 0) {
      report_.rss_slope_mib_per_minute = 60 * (n * str - st * sr) / denominator;
    }
  }

  Client& client_;
  const SoakOptions options_;
  const v1::ModelSpec spec_;
  const absl::Time start_;
  absl::Notification done_;
  absl::Mutex mu_;
  SoakReport report_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<double, double>> rss_ ABSL_GUARDED_BY(mu_);  // (seconds, MiB)
};

}  // namespace

std::string SoakReport::ToString() const {
  std::string out =
      absl::StrFormat("soak: %.0f s, %d checks, ", absl::ToDoubleSeconds(elapsed), checks);
  for (const auto& [kind, n] : calls) absl::StrAppendFormat(&out, "%s %d, ", kind, n);
  absl::StrAppendFormat(&out, "\nfailures: %d (deadline exceeded: %d)", failures,
                        deadline_exceeded);
  for (const std::string& f : failure_samples) absl::StrAppend(&out, "\n  ", f);
  absl::StrAppendFormat(&out, "\ninvariant violations: %d", violations.size());
  for (const std::string& v : violations) absl::StrAppend(&out, "\n  ", v);
  absl::StrAppendFormat(&out, "\npaging queue: at most %d waiting", max_queue_depth);
  if (rss_samples > 0) {
    absl::StrAppendFormat(&out,
                          "\nserver resident memory: %.1f MiB after warm-up, %.1f MiB at the end, "
                          "slope %+.2f MiB/min over %d samples",
                          rss_after_warmup_mib, rss_end_mib, rss_slope_mib_per_minute, rss_samples);
  }
  return out;
}

absl::StatusOr<SoakReport> RunSoak(Client& client, const SoakOptions& options,
                                   const std::function<void(absl::Duration)>& progress) {
  auto spec = client.FindModel(options.model);
  if (!spec.ok()) return spec.status();
  return Soak(client, options, *spec).Run(progress);
}

}  // namespace moe_router
