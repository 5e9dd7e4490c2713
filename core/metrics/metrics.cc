#include "core/metrics/metrics.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_format.h"

namespace moe_router {
namespace {

void AtomicAdd(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

void AtomicMax(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

void AtomicMin(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (v < cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

uint64_t Load(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }
void Inc(std::atomic<uint64_t>& a, uint64_t n = 1) { a.fetch_add(n, std::memory_order_relaxed); }

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  Inc(counts_[bucket]);
  Inc(count_);
  AtomicAdd(sum_, value);
  AtomicMax(max_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.upper_bounds = bounds_;
  for (size_t i = 0; i <= bounds_.size(); ++i) s.counts.push_back(Load(counts_[i]));
  s.count = Load(count_);
  s.sum = sum_.load(std::memory_order_relaxed);
  s.max = max_.load(std::memory_order_relaxed);
  return s;
}

double Histogram::Snapshot::Quantile(double q) const {
  if (count == 0) return 0;
  const double target = q * count;
  uint64_t seen = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    seen += counts[i];
    if (seen >= target) return i < upper_bounds.size() ? upper_bounds[i] : max;
  }
  return max;
}

std::vector<double> LatencyBuckets() {
  return {1e-6, 2.5e-6, 5e-6,   1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
          5e-3, 1e-2,   2.5e-2, 5e-2, 0.1,    0.25, 0.5,  1,      2.5,  5,    10};
}

std::vector<double> GateMassBuckets() {
  return {0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0};
}

void LayerTotals::Add(const LayerTotals& o) {
  routed_tokens += o.routed_tokens;
  hits += o.hits;
  misses += o.misses;
  changed_tokens += o.changed_tokens;
  for (int p = 0; p < kNumPriorities; ++p) page_ins[p] += o.page_ins[p];
  page_outs += o.page_outs;
  paged_bytes += o.paged_bytes;
  page_in_failures += o.page_in_failures;
  prefetch_issued += o.prefetch_issued;
  prefetch_dropped += o.prefetch_dropped;
  repages += o.repages;
}

std::string TargetsSummary::ToString() const {
  return absl::StrFormat("hit rate %.3f (%s), routing %.2f us/token (%s)", hit_rate,
                         hit_rate_ok ? "meets target" : "below target", route_us_per_token,
                         route_overhead_ok ? "meets target" : "over target");
}

namespace {

// The fields of WorkerCacheCounters, so that copying, subtracting and
// exporting them is written once.
constexpr uint64_t WorkerCacheCounters::*kWorkerCounterFields[] = {
    &WorkerCacheCounters::routed_tokens,  &WorkerCacheCounters::hits,
    &WorkerCacheCounters::misses,         &WorkerCacheCounters::urgent_loads,
    &WorkerCacheCounters::prefetch_loads, &WorkerCacheCounters::evictions,
    &WorkerCacheCounters::load_bytes,     &WorkerCacheCounters::unplaced};

}  // namespace

WorkerCacheCounters WorkerCacheCounters::Minus(const WorkerCacheCounters& before) const {
  WorkerCacheCounters delta;
  for (auto field : kWorkerCounterFields) delta.*field = this->*field - before.*field;
  return delta;
}

void ModelMetrics::RecordWorkerCall(const WorkerCacheCounters& delta) {
  static_assert(std::size(kWorkerCounterFields) == std::size(decltype(workers_){}));
  for (size_t i = 0; i < std::size(kWorkerCounterFields); ++i) {
    Inc(workers_[i], delta.*kWorkerCounterFields[i]);
  }
}

ModelMetrics::ModelMetrics(uint32_t num_layers, Targets targets)
    : num_layers_(num_layers),
      targets_(targets),
      layers_(new LayerCounters[num_layers]),
      route_seconds_(LatencyBuckets()),
      page_in_seconds_(LatencyBuckets()),
      gate_mass_(GateMassBuckets()),
      fetch_from_memory_seconds_(LatencyBuckets()) {}

void ModelMetrics::RecordRoute(uint32_t layer, uint32_t tokens, uint64_t hits, uint64_t misses,
                               uint32_t changed, double gate_mass_sum, double gate_mass_min,
                               double seconds) {
  CountRoute(layer, tokens, hits, misses, changed, gate_mass_sum, gate_mass_min);
  Inc(route_batches_);
  route_seconds_.Observe(seconds);
}

void ModelMetrics::RecordReportedRoute(uint32_t layer, uint64_t tokens, uint64_t hits,
                                       uint64_t misses, uint64_t changed, double gate_mass_sum,
                                       double gate_mass_min) {
  CountRoute(layer, tokens, hits, misses, changed, gate_mass_sum, gate_mass_min);
  Inc(reported_tokens_, tokens);
}

void ModelMetrics::CountRoute(uint32_t layer, uint64_t tokens, uint64_t hits, uint64_t misses,
                              uint64_t changed, double gate_mass_sum, double gate_mass_min) {
  LayerCounters& c = layers_[layer];
  Inc(c.routed_tokens, tokens);
  Inc(c.hits, hits);
  Inc(c.misses, misses);
  Inc(c.changed_tokens, changed);
  if (tokens > 0) {
    gate_mass_.Observe(gate_mass_sum / tokens);
    AtomicMin(gate_mass_min_, gate_mass_min);
  }
}

void ModelMetrics::RecordPageIn(ExpertKey key, Priority priority, uint64_t bytes, double seconds) {
  LayerCounters& c = layers_[key.layer];
  Inc(c.page_ins[static_cast<int>(priority)]);
  Inc(c.paged_bytes, bytes);
  page_in_seconds_.Observe(seconds);
}

void ModelMetrics::RecordPageInFailure(ExpertKey key, const absl::Status& status) {
  Inc(layers_[key.layer].page_in_failures);
  if (absl::IsDataLoss(status)) Inc(checksum_failures_);
}

void ModelMetrics::RecordPageOut(ExpertKey key) { Inc(layers_[key.layer].page_outs); }

void ModelMetrics::RecordRepage(ExpertKey key) { Inc(layers_[key.layer].repages); }

void ModelMetrics::RecordPrefetch(ExpertKey key, bool dropped) {
  Inc(dropped ? layers_[key.layer].prefetch_dropped : layers_[key.layer].prefetch_issued);
}

MetricsSnapshot ModelMetrics::Snapshot() const {
  MetricsSnapshot s;
  for (uint32_t l = 0; l < num_layers_; ++l) {
    const LayerCounters& c = layers_[l];
    LayerTotals t;
    t.routed_tokens = Load(c.routed_tokens);
    t.hits = Load(c.hits);
    t.misses = Load(c.misses);
    t.changed_tokens = Load(c.changed_tokens);
    for (int p = 0; p < kNumPriorities; ++p) t.page_ins[p] = Load(c.page_ins[p]);
    t.page_outs = Load(c.page_outs);
    t.paged_bytes = Load(c.paged_bytes);
    t.page_in_failures = Load(c.page_in_failures);
    t.prefetch_issued = Load(c.prefetch_issued);
    t.prefetch_dropped = Load(c.prefetch_dropped);
    t.repages = Load(c.repages);
    s.total.Add(t);
    s.layers.push_back(t);
  }
  s.route_batches = Load(route_batches_);
  s.reported_tokens = Load(reported_tokens_);
  s.route_errors = Load(route_errors_);
  s.resent_reports = Load(resent_reports_);
  s.checksum_failures = Load(checksum_failures_);
  s.gate_mass_min = gate_mass_min_.load(std::memory_order_relaxed);
  s.route_seconds = route_seconds_.Read();
  s.page_in_seconds = page_in_seconds_.Read();
  s.gate_mass = gate_mass_.Read();
  s.fetch_from_memory_seconds = fetch_from_memory_seconds_.Read();
  for (size_t i = 0; i < std::size(kWorkerCounterFields); ++i) {
    s.workers.*kWorkerCounterFields[i] = Load(workers_[i]);
  }
  s.targets.hit_rate = s.total.HitRate();
  const uint64_t routed_here = s.total.routed_tokens - s.reported_tokens;
  s.targets.route_us_per_token = routed_here == 0 ? 0 : s.route_seconds.sum * 1e6 / routed_here;
  s.targets.hit_rate_ok = s.targets.hit_rate >= targets_.min_hit_rate;
  s.targets.route_overhead_ok = s.targets.route_us_per_token < targets_.max_route_us_per_token;
  return s;
}

}  // namespace moe_router
