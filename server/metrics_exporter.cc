#include "server/metrics_exporter.h"

#include <CivetServer.h>
#include <civetweb.h>
#include <unistd.h>

#include <cstdio>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "proto/grpc_status.h"

namespace moe_router {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

class Families {
 public:
  MetricFamily& Get(const std::string& name, const std::string& help, MetricType type) {
    for (MetricFamily& f : families_) {
      if (f.name == name) return f;
    }
    families_.push_back(MetricFamily{name, help, type, {}});
    return families_.back();
  }
  void Counter(const std::string& name, const std::string& help,
               std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    m.counter.value = value;
    Get(name, help, MetricType::Counter).metric.push_back(std::move(m));
  }
  void Gauge(const std::string& name, const std::string& help,
             std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    m.gauge.value = value;
    Get(name, help, MetricType::Gauge).metric.push_back(std::move(m));
  }
  void Histogram(const std::string& name, const std::string& help,
                 std::vector<ClientMetric::Label> labels, const Histogram::Snapshot& h) {
    ClientMetric m;
    m.label = std::move(labels);
    m.histogram.sample_count = h.count;
    m.histogram.sample_sum = h.sum;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.counts.size(); ++i) {
      cumulative += h.counts[i];
      m.histogram.bucket.push_back({cumulative, i < h.upper_bounds.size()
                                                    ? h.upper_bounds[i]
                                                    : std::numeric_limits<double>::infinity()});
    }
    Get(name, help, MetricType::Histogram).metric.push_back(std::move(m));
  }
  std::vector<MetricFamily> Take() { return std::move(families_); }

 private:
  std::vector<MetricFamily> families_;
};

void AddRouteRequests(Families& f, const std::string& model, const std::atomic<uint64_t>* codes) {
  for (int c = 0; c < kStatusCodeCount; ++c) {
    const uint64_t n = codes[c].load(std::memory_order_relaxed);
    if (n == 0 && c != 0) continue;
    f.Counter("moe_router_route_requests_total", "RouteTokens calls by outcome.",
              {{"model", model}, {"code", StatusCodeName(static_cast<absl::StatusCode>(c))}},
              static_cast<double>(n));
  }
}

// Worker caches, summed per model: the set of caches is unbounded, so no
// per-cache label.
void AddWorkerCaches(Families& f, const std::vector<ClientMetric::Label>& labels,
                     const ModelStats& s) {
  const WorkerCacheCounters& w = s.metrics.workers;
  f.Gauge("moe_router_worker_caches_open", "Worker caches open.", labels,
          static_cast<double>(s.open_caches));
  f.Gauge("moe_router_worker_cache_memory_bytes", "Server memory held for worker cache views.",
          labels, static_cast<double>(s.worker_cache_memory_bytes));
  f.Counter("moe_router_worker_cache_hits_total",
            "Chosen experts the calling worker held, over all worker caches.", labels,
            static_cast<double>(w.hits));
  f.Counter("moe_router_worker_cache_misses_total",
            "Chosen experts the calling worker had to load, over all worker caches.", labels,
            static_cast<double>(w.misses));
  for (const auto& [priority, n] :
       {std::pair{"urgent", w.urgent_loads}, std::pair{"prefetch", w.prefetch_loads}}) {
    f.Counter("moe_router_worker_page_in_instructions_total",
              "Experts workers were told to load, by priority.",
              {labels.front(), {"priority", priority}}, static_cast<double>(n));
  }
  f.Counter("moe_router_worker_eviction_instructions_total", "Experts workers were told to drop.",
            labels, static_cast<double>(w.evictions));
  f.Counter("moe_router_learn_reports_resent_total",
            "Learn reports sent again after their acknowledgement was lost, not folded twice.",
            labels, static_cast<double>(s.metrics.resent_reports));
  f.Counter("moe_router_worker_load_bytes_total", "Bytes workers were told to load.", labels,
            static_cast<double>(w.load_bytes));
  f.Counter("moe_router_worker_unplaced_total",
            "Chosen experts that did not fit beside their batch's others in a worker's budget.",
            labels, static_cast<double>(w.unplaced));
}

// The process's resident set, from /proc/self/statm (0 where unreadable).
uint64_t ResidentMemoryBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int read = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return read == 2 ? resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace

std::vector<MetricFamily> CollectMetrics(const ModelRegistry& registry) {
  Families f;
  f.Gauge("moe_router_build_info", "Build of the running moe-routerd.",
          {{"version", MOE_ROUTER_VERSION}}, 1);
  f.Gauge("process_resident_memory_bytes", "Resident memory of moe-routerd.", {},
          static_cast<double>(ResidentMemoryBytes()));
  f.Gauge("moe_router_memory_limit_bytes", "What all models together may reserve (--memory_limit).",
          {}, static_cast<double>(registry.memory_limit_bytes()));
  f.Gauge("moe_router_memory_committed_bytes",
          "What the hosted models reserve: budgets, learned state, worker cache views.", {},
          static_cast<double>(registry.committed_bytes()));
  f.Counter("moe_router_state_snapshot_failures_total",
            "Saves of learned state to --state_dir that failed (the previous snapshot stays).", {},
            static_cast<double>(registry.snapshot_failures()));
  f.Gauge("moe_router_state_snapshot_timestamp_seconds",
          "When learned state was last saved (0: not yet).", {}, registry.last_snapshot_seconds());
  for (const auto& model : registry.List()) {
    const std::string& name = model->spec.name();
    const ModelStats s = model->engine->Stats();
    const MetricsSnapshot& m = s.metrics;
    const std::vector<ClientMetric::Label> labels = {{"model", name}};
    AddRouteRequests(f, name, model->route_requests.get());
    f.Gauge("moe_router_model_memory_bytes", "What the model reserves of --memory_limit.", labels,
            static_cast<double>(model->footprint.Total()));
    f.Counter("moe_router_routed_tokens_total", "Tokens routed.", labels,
              static_cast<double>(m.total.routed_tokens));
    f.Counter("moe_router_cache_hits_total", "Chosen experts that were resident.", labels,
              static_cast<double>(m.total.hits));
    f.Counter("moe_router_cache_misses_total", "Chosen experts that were not resident.", labels,
              static_cast<double>(m.total.misses));
    f.Histogram("moe_router_route_duration_seconds", "Time to route one request's batch.", labels,
                m.route_seconds);
    for (int p = 0; p < kNumPriorities; ++p) {
      const char* priority = PriorityName(static_cast<Priority>(p));
      f.Counter("moe_router_page_ins_total", "Experts paged in, by priority.",
                {{"model", name}, {"priority", priority}},
                static_cast<double>(m.total.page_ins[p]));
      f.Gauge("moe_router_paging_queue_depth", "Paging requests waiting, by priority.",
              {{"model", name}, {"priority", priority}}, static_cast<double>(s.queue_depth[p]));
    }
    f.Counter("moe_router_page_outs_total", "Experts paged out (evicted).", labels,
              static_cast<double>(m.total.page_outs));
    f.Histogram("moe_router_page_in_duration_seconds", "Time to read and verify one expert.",
                labels, m.page_in_seconds);
    f.Counter("moe_router_paged_bytes_total", "Bytes paged in.", labels,
              static_cast<double>(m.total.paged_bytes));
    f.Counter("moe_router_prefetches_total", "Experts brought in by prefetch.", labels,
              static_cast<double>(s.cache.prefetch_loaded));
    f.Counter("moe_router_prefetch_hits_total", "Prefetched experts used before eviction.", labels,
              static_cast<double>(s.cache.prefetch_used));
    f.Gauge("moe_router_cache_resident_bytes", "Bytes of resident experts.", labels,
            static_cast<double>(s.cache.resident_bytes));
    f.Gauge("moe_router_cache_budget_bytes", "The cache's byte budget.", labels,
            static_cast<double>(s.cache.budget_bytes));
    f.Counter("moe_router_checksum_failures_total", "Page-ins whose checksum did not match.",
              labels, static_cast<double>(m.checksum_failures));
    f.Counter("moe_router_routing_changed_tokens_total",
              "Tokens whose experts the cache bonus changed.", labels,
              static_cast<double>(m.total.changed_tokens));
    f.Histogram("moe_router_gate_mass_retained",
                "Per request: mean share of the original top-k probability kept.", labels,
                m.gate_mass);
    AddWorkerCaches(f, labels, s);
  }
  AddRouteRequests(f, "_unknown_", registry.unknown_route_requests());
  return f.Take();
}

class MetricsExporter::Collector final : public prometheus::Collectable {
 public:
  explicit Collector(const ModelRegistry* registry) : registry_(registry) {}
  std::vector<MetricFamily> Collect() const override { return CollectMetrics(*registry_); }

 private:
  const ModelRegistry* const registry_;
};

namespace {

// The probe states of each exporter, by the port it listens on: civetweb's
// request callback has no other way back to its exporter.
absl::Mutex probes_mu(absl::kConstInit);
absl::flat_hash_map<int, const ProbeStates*>& ProbesByPort()
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(probes_mu) {
  static auto* probes = new absl::flat_hash_map<int, const ProbeStates*>();
  return *probes;
}

// civetweb's begin_request: answers /readyz and /livez itself (a nonzero
// return is the status it sent), leaves every other path to the Exposer.
int AnswerProbe(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  if (request == nullptr || request->local_uri == nullptr) return 0;
  const absl::string_view path = request->local_uri;
  const bool readiness = path == "/readyz";
  if (!readiness && path != "/livez") return 0;
  bool up = false;
  {
    absl::MutexLock lock(&probes_mu);
    const auto it = ProbesByPort().find(request->server_port);
    if (it != ProbesByPort().end()) {
      up = (readiness ? it->second->ready : it->second->live).load(std::memory_order_relaxed);
    }
  }
  const std::string body = up ? "ok\n" : (readiness ? "not ready\n" : "not live\n");
  const int code = up ? 200 : 503;
  mg_printf(connection,
            "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n%s",
            code, up ? "OK" : "Service Unavailable", body.size(), body.c_str());
  return code;
}

CivetCallbacks ProbeCallbacks() {
  CivetCallbacks callbacks;  // its constructor clears every callback
  callbacks.begin_request = &AnswerProbe;
  return callbacks;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsExporter>> MetricsExporter::Start(
    const std::string& listen, const ModelRegistry* registry, const ProbeStates* probes) {
  auto exporter = std::unique_ptr<MetricsExporter>(new MetricsExporter());
  static const CivetCallbacks callbacks = ProbeCallbacks();
  try {
    exporter->exposer_ = std::make_unique<prometheus::Exposer>(listen, 2, &callbacks);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrFormat("cannot serve metrics on %s: %s", listen, e.what()));
  }
  exporter->collector_ = std::make_shared<Collector>(registry);
  exporter->exposer_->RegisterCollectable(exporter->collector_, "/metrics");
  const std::vector<int> ports = exporter->exposer_->GetListeningPorts();
  exporter->port_ = ports.empty() ? 0 : ports.front();
  absl::MutexLock lock(&probes_mu);
  ProbesByPort()[exporter->port_] = probes;
  return exporter;
}

MetricsExporter::~MetricsExporter() {
  // The server stops first, so no request is left to read the probes.
  exposer_.reset();
  absl::MutexLock lock(&probes_mu);
  ProbesByPort().erase(port_);
}

int MetricsExporter::port() const { return port_; }

}  // namespace moe_router
