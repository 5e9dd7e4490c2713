#include "server/core_to_proto.h"

#include "core/engine/defaults.h"

namespace moe_router {
namespace {

void AddRef(const ExpertKey& key, google::protobuf::RepeatedPtrField<v1::ExpertRef>* out) {
  v1::ExpertRef* ref = out->Add();
  ref->set_layer(key.layer);
  ref->set_expert(key.expert);
}

}  // namespace

void ToProto(const RouteOutcome& routed, v1::RouteTokensResponse* out) {
  const RouteResult& batch = routed.batch;
  out->mutable_experts()->Add(batch.experts.begin(), batch.experts.end());
  out->mutable_weights()->Add(batch.weights.begin(), batch.weights.end());
  for (uint8_t r : batch.resident) out->add_resident(r != 0);
  for (const ExpertKey& key : routed.urgent) AddRef(key, out->mutable_urgent_page_ins());
  for (const ExpertKey& key : routed.prefetch) AddRef(key, out->mutable_prefetches());
  out->set_tokens(batch.tokens);
  out->set_changed_tokens(batch.changed_tokens);
  out->set_gate_mass_retained(batch.tokens ? batch.gate_mass_sum / batch.tokens : 1.0);
  for (const ExpertKey& key : routed.evictions) AddRef(key, out->mutable_evictions());
}

void ToProto(const PrefetchOutcome& outcome, v1::PrefetchResponse* out) {
  out->mutable_queued()->Add(outcome.queued.begin(), outcome.queued.end());
  out->mutable_already_resident()->Add(outcome.already_resident.begin(),
                                       outcome.already_resident.end());
  out->mutable_dropped()->Add(outcome.dropped.begin(), outcome.dropped.end());
  for (const ExpertKey& key : outcome.evictions) AddRef(key, out->mutable_evictions());
}

void ToProto(const std::string& model, const WorkerCacheInfo& info, v1::CacheInfo* out) {
  out->set_model(model);
  out->set_cache(info.cache);
  out->set_budget_bytes(info.budget_bytes);
  for (const ExpertKey& key : info.resident) AddRef(key, out->mutable_resident());
  out->set_created(info.created);
  for (const ExpertKey& key : info.evictions) AddRef(key, out->mutable_evictions());
  out->set_eviction_policy(info.policy);
}

namespace {

void ToProto(const WorkerCacheCounters& c, uint64_t memory_bytes, v1::WorkerCacheTotals* out) {
  out->set_routed_tokens(c.routed_tokens);
  out->set_hits(c.hits);
  out->set_misses(c.misses);
  out->set_urgent_loads(c.urgent_loads);
  out->set_prefetch_loads(c.prefetch_loads);
  out->set_evictions(c.evictions);
  out->set_load_bytes(c.load_bytes);
  out->set_unplaced(c.unplaced);
  out->set_memory_bytes(memory_bytes);
}

void AddTier(const char* tier, const Histogram::Snapshot& seconds, v1::ModelStats* out) {
  v1::TierEstimate* estimate = out->add_tiers();
  estimate->set_tier(tier);
  estimate->set_page_in_seconds(seconds.Mean());
  estimate->set_samples(seconds.count);
}

}  // namespace

void ToProto(const std::string& model, const WorkerCacheStats& s, v1::ModelStats* out) {
  const WorkerCacheCounters& c = s.counters;
  out->set_model(model);
  out->set_cache(s.cache);
  out->set_eviction_policy(s.policy);
  out->set_open_caches(1);
  out->set_hit_rate(c.HitRate());
  out->set_routed_tokens(c.routed_tokens);
  out->set_page_ins_urgent(c.urgent_loads);
  out->set_page_ins_prefetch(c.prefetch_loads);
  out->set_paged_bytes(c.load_bytes);
  out->set_evictions(c.evictions);
  out->set_resident_bytes(s.resident_bytes);
  out->set_budget_bytes(s.budget_bytes);
  ToProto(c, s.memory_bytes, out->mutable_workers());
  for (uint32_t l = 0; l < s.resident_by_layer.size(); ++l) {
    v1::LayerStats* layer = out->add_layers();
    layer->set_layer(l);
    layer->set_resident_experts(s.resident_by_layer[l]);
  }
}

void ToProto(const ModelStats& s, v1::ModelStats* out) {
  const MetricsSnapshot& m = s.metrics;
  out->set_model(s.name);
  out->set_hit_rate(m.total.HitRate());
  out->set_routed_tokens(m.total.routed_tokens);
  out->set_changed_tokens(m.total.changed_tokens);
  out->set_gate_mass_retained_mean(m.gate_mass.Mean());
  out->set_gate_mass_retained_min(m.gate_mass_min);
  out->set_page_ins_urgent(m.total.page_ins[0]);
  out->set_page_ins_normal(m.total.page_ins[1]);
  out->set_page_ins_prefetch(m.total.page_ins[2]);
  out->set_paged_bytes(m.total.paged_bytes);
  out->set_page_in_seconds_mean(m.page_in_seconds.Mean());
  out->set_page_in_seconds_max(m.page_in_seconds.max);
  out->set_prefetch_loaded(s.cache.prefetch_loaded);
  out->set_prefetch_used(s.cache.prefetch_used);
  out->set_checksum_failures(m.checksum_failures);
  out->set_evictions(s.cache.evictions);
  out->set_resident_bytes(s.cache.resident_bytes);
  out->set_budget_bytes(s.cache.budget_bytes);
  out->set_loading_bytes(s.cache.loading_bytes);
  out->set_peak_bytes(s.cache.peak_bytes);
  uint64_t queued = 0;
  for (uint64_t depth : s.queue_depth) queued += depth;
  out->set_paging_queue_depth(queued);
  for (const auto& [precision, count] : s.resident_by_precision) {
    (*out->mutable_resident_by_precision())[precision] = count;
  }
  out->set_resident_hot(s.resident_by_class[0]);
  out->set_resident_warm(s.resident_by_class[1]);
  out->set_resident_cold(s.resident_by_class[2]);
  out->set_route_seconds_per_token(m.targets.route_us_per_token * 1e-6);
  out->set_meets_targets(m.targets.ok());
  out->set_targets_summary(m.targets.ToString());
  out->set_eviction_policy(s.cache.policy);
  out->set_open_caches(s.open_caches);
  ToProto(m.workers, s.worker_cache_memory_bytes, out->mutable_workers());
  AddTier("worker", Histogram::Snapshot{}, out);
  AddTier("server", m.fetch_from_memory_seconds, out);
  AddTier("store", m.page_in_seconds, out);
  for (uint32_t l = 0; l < m.layers.size(); ++l) {
    const LayerTotals& t = m.layers[l];
    v1::LayerStats* layer = out->add_layers();
    layer->set_layer(l);
    layer->set_routed_tokens(t.routed_tokens);
    layer->set_hits(t.hits);
    layer->set_misses(t.misses);
    layer->set_hit_rate(t.HitRate());
    layer->set_resident_experts(s.layers[l].resident_experts);
    layer->set_page_ins(t.PageIns());
    layer->set_page_outs(t.page_outs);
    layer->set_paged_bytes(t.paged_bytes);
    layer->set_coactivation_top1(s.layers[l].coactivation_top1);
    layer->set_coactivation_top2(s.layers[l].coactivation_top2);
  }
}

void ToProtoHeader(const ExpertData& e, v1::ExpertChunk* out) {
  for (const TensorData& t : e.tensors) {
    v1::TensorHeader* header = out->add_tensors();
    header->set_name(t.name);
    header->set_dtype(t.dtype);
    header->mutable_shape()->Add(t.shape.begin(), t.shape.end());
    header->set_size_bytes(t.size);
    header->set_xxh3(t.checksum);
  }
  out->set_precision(e.precision);
  out->set_total_bytes(e.size);
  out->set_expert_xxh3(e.checksum);
}

v1::ModelSpec DefaultModelSpec() {
  const ModelConfig c = DefaultModelConfig();
  v1::ModelSpec spec;
  spec.set_name(c.name);
  spec.set_num_layers(c.num_layers);
  spec.set_num_experts(c.router.num_experts);
  spec.set_top_k(c.router.top_k);
  spec.set_budget_bytes(c.budget_bytes);
  spec.set_eviction_policy(c.eviction_policy);
  spec.mutable_synthetic()->set_expert_bytes(kDefaultExpertBytes);
  return spec;
}

}  // namespace moe_router
