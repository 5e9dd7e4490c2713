#ifndef MOE_ROUTER_CORE_METRICS_METRICS_H_
#define MOE_ROUTER_CORE_METRICS_METRICS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/base/types.h"

namespace moe_router {

/// Fixed-bucket histogram, lock-free; any thread may observe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> counts;  // per bucket, not cumulative; last is +Inf
    uint64_t count = 0;
    double sum = 0;
    double max = 0;
    double Mean() const { return count == 0 ? 0 : sum / count; }
    /// Upper bound of the bucket holding quantile q (an over-estimate).
    double Quantile(double q) const;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
  std::atomic<double> max_{0};
};

/// Seconds, 1 us to 10 s, roughly x2.5 per bucket.
std::vector<double> LatencyBuckets();
/// Gate mass retained, 0.5 to 1.
std::vector<double> GateMassBuckets();

/// Counters of one layer; relaxed atomics, written on the routing and paging
/// paths, read by exporters.
struct LayerCounters {
  std::atomic<uint64_t> routed_tokens{0};
  std::atomic<uint64_t> hits{0};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> changed_tokens{0};
  std::atomic<uint64_t> page_ins[kNumPriorities] = {};
  std::atomic<uint64_t> page_outs{0};
  std::atomic<uint64_t> paged_bytes{0};
  std::atomic<uint64_t> page_in_failures{0};
  std::atomic<uint64_t> prefetch_issued{0};
  std::atomic<uint64_t> prefetch_dropped{0};
  std::atomic<uint64_t> repages{0};
};

/// Plain copy of the counters, for reports.
struct LayerTotals {
  uint64_t routed_tokens = 0, hits = 0, misses = 0, changed_tokens = 0;
  uint64_t page_ins[kNumPriorities] = {};
  uint64_t page_outs = 0, paged_bytes = 0, page_in_failures = 0;
  uint64_t prefetch_issued = 0, prefetch_dropped = 0, repages = 0;
  double HitRate() const {
    const uint64_t n = hits + misses;
    return n == 0 ? 0 : static_cast<double>(hits) / n;
  }
  uint64_t PageIns() const { return page_ins[0] + page_ins[1] + page_ins[2]; }
  void Add(const LayerTotals& o);
};

/// What a model should reach; the summary says whether it does.
struct Targets {
  double min_hit_rate = 0.70;
  double max_route_us_per_token = 15.0;
};

struct TargetsSummary {
  double hit_rate = 0;
  double route_us_per_token = 0;
  bool hit_rate_ok = false;
  bool route_overhead_ok = false;
  bool ok() const { return hit_rate_ok && route_overhead_ok; }
  std::string ToString() const;
};

/// What worker caches were told, summed over a cache's life or over all
/// the caches of a model.
struct WorkerCacheCounters {
  uint64_t routed_tokens = 0;
  uint64_t hits = 0;    // chosen experts the worker held when routed
  uint64_t misses = 0;  // chosen experts it had to load
  uint64_t urgent_loads = 0;
  uint64_t prefetch_loads = 0;
  uint64_t evictions = 0;
  uint64_t load_bytes = 0;
  /// Chosen experts that could not be placed at all: the call's own experts
  /// already filled the budget. The worker streams them without keeping them.
  uint64_t unplaced = 0;
  double HitRate() const {
    const uint64_t n = hits + misses;
    return n == 0 ? 0 : static_cast<double>(hits) / n;
  }
  WorkerCacheCounters Minus(const WorkerCacheCounters& before) const;
};

struct MetricsSnapshot {
  std::vector<LayerTotals> layers;
  LayerTotals total;
  uint64_t route_batches = 0;
  uint64_t reported_tokens = 0;  // of total.routed_tokens, routed by workers themselves
  /// Learn reports a worker sent again after their acknowledgement was
  /// lost, recognised and not folded twice.
  uint64_t resent_reports = 0;
  uint64_t route_errors = 0;
  uint64_t checksum_failures = 0;
  double gate_mass_min = 1;
  Histogram::Snapshot route_seconds;
  Histogram::Snapshot page_in_seconds;
  Histogram::Snapshot gate_mass;  // per batch: mean over its tokens
  /// FetchExpert calls served from the server's memory (no page-in).
  Histogram::Snapshot fetch_from_memory_seconds;
  WorkerCacheCounters workers;
  TargetsSummary targets;
};

/// Counters and histograms of one model, per layer where it matters.
class ModelMetrics {
 public:
  ModelMetrics(uint32_t num_layers, Targets targets = {});

  LayerCounters& layer(uint32_t l) { return layers_[l]; }
  uint32_t num_layers() const { return num_layers_; }

  void RecordRoute(uint32_t layer, uint32_t tokens, uint64_t hits, uint64_t misses,
                   uint32_t changed, double gate_mass_sum, double gate_mass_min, double seconds);
  /// Tokens a worker routed in its own process and reported: counted as
  /// routed, but their time is the worker's, not this server's.
  void RecordReportedRoute(uint32_t layer, uint64_t tokens, uint64_t hits, uint64_t misses,
                           uint64_t changed, double gate_mass_sum, double gate_mass_min);
  void RecordRouteError() { route_errors_.fetch_add(1, std::memory_order_relaxed); }
  void RecordResentReport() { resent_reports_.fetch_add(1, std::memory_order_relaxed); }
  void RecordPageIn(ExpertKey key, Priority priority, uint64_t bytes, double seconds);
  void RecordPageInFailure(ExpertKey key, const absl::Status& status);
  void RecordPageOut(ExpertKey key);
  void RecordRepage(ExpertKey key);
  void RecordPrefetch(ExpertKey key, bool dropped);
  /// One worker-cache call: what it added to that cache's counters.
  void RecordWorkerCall(const WorkerCacheCounters& delta);
  /// A FetchExpert served from the server's memory, start to last byte.
  void RecordFetchFromMemory(double seconds) { fetch_from_memory_seconds_.Observe(seconds); }

  MetricsSnapshot Snapshot() const;

 private:
  void CountRoute(uint32_t layer, uint64_t tokens, uint64_t hits, uint64_t misses, uint64_t changed,
                  double gate_mass_sum, double gate_mass_min);

  const uint32_t num_layers_;
  const Targets targets_;
  std::unique_ptr<LayerCounters[]> layers_;
  std::atomic<uint64_t> route_batches_{0};
  std::atomic<uint64_t> reported_tokens_{0};
  std::atomic<uint64_t> route_errors_{0};
  std::atomic<uint64_t> resent_reports_{0};
  std::atomic<uint64_t> checksum_failures_{0};
  std::atomic<double> gate_mass_min_{1};
  Histogram route_seconds_;
  Histogram page_in_seconds_;
  Histogram gate_mass_;
  Histogram fetch_from_memory_seconds_;
  // One per field of WorkerCacheCounters, in kWorkerCounterFields order.
  std::atomic<uint64_t> workers_[8] = {};
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_METRICS_METRICS_H_
