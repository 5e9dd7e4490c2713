#include "proto/control_stream_proto.h"

#include "absl/strings/str_format.h"

namespace moe_router {

void ToProto(const RoutingReport& report, v1::WorkerReport* out) {
  out->set_sequence(report.sequence);
  for (uint32_t l = 0; l < report.layers.size(); ++l) {
    const LayerReport& r = report.layers[l];
    if (r.empty()) continue;
    v1::LayerRoutingReport* p = out->add_layers();
    p->set_layer(l);
    p->set_tokens(r.tokens);
    p->set_batches(r.batches);
    p->set_hits(r.hits);
    p->set_misses(r.misses);
    p->set_changed_tokens(r.changed_tokens);
    p->set_gate_mass_sum(r.gate_mass_sum);
    p->set_gate_mass_min(r.gate_mass_min);
    p->mutable_activations()->Add(r.activations.begin(), r.activations.end());
    p->mutable_pair_index()->Add(r.pair_index.begin(), r.pair_index.end());
    p->mutable_pair_count()->Add(r.pair_count.begin(), r.pair_count.end());
    p->set_range_keep(r.range.keep);
    p->set_range_add(r.range.add);
  }
  for (const ExpertKey& key : report.loaded) {
    v1::ExpertRef* ref = out->add_loaded();
    ref->set_layer(key.layer);
    ref->set_expert(key.expert);
  }
  out->set_loaded_variants(
      std::string(report.loaded_variants.begin(), report.loaded_variants.end()));
  for (const ExpertKey& key : report.dropped) {
    v1::ExpertRef* ref = out->add_dropped();
    ref->set_layer(key.layer);
    ref->set_expert(key.expert);
  }
  out->set_residency_in_sync(report.residency_in_sync);
  v1::WorkerCacheTotals* c = out->mutable_counters();
  c->set_routed_tokens(report.counters.routed_tokens);
  c->set_hits(report.counters.hits);
  c->set_misses(report.counters.misses);
  c->set_urgent_loads(report.counters.urgent_loads);
  c->set_prefetch_loads(report.counters.prefetch_loads);
  c->set_evictions(report.counters.evictions);
  c->set_load_bytes(report.counters.load_bytes);
  c->set_unplaced(report.counters.unplaced);
}

absl::StatusOr<RoutingReport> ReportFromProto(const v1::WorkerReport& report, uint32_t num_layers,
                                              uint32_t num_experts) {
  RoutingReport out;
  out.sequence = report.sequence();
  out.layers.resize(num_layers);
  for (const v1::LayerRoutingReport& p : report.layers()) {
    if (p.layer() >= num_layers) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "report: layer %d is out of range: the model has %d layers", p.layer(), num_layers));
    }
    LayerReport& r = out.layers[p.layer()];
    if (!r.activations.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("report: layer %d is reported twice", p.layer()));
    }
    if (p.activations_size() != static_cast<int>(num_experts)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("report: layer %d has %d activation counts, expected %d", p.layer(),
                          p.activations_size(), num_experts));
    }
    r.tokens = p.tokens();
    r.batches = p.batches();
    r.hits = p.hits();
    r.misses = p.misses();
    r.changed_tokens = p.changed_tokens();
    r.gate_mass_sum = p.gate_mass_sum();
    r.gate_mass_min = p.gate_mass_min();
    r.activations.assign(p.activations().begin(), p.activations().end());
    r.pair_index.assign(p.pair_index().begin(), p.pair_index().end());
    r.pair_count.assign(p.pair_count().begin(), p.pair_count().end());
    r.range = {p.range_keep(), p.range_add()};
  }
  for (const v1::ExpertRef& ref : report.loaded())
    out.loaded.push_back({ref.layer(), ref.expert()});
  out.loaded_variants.assign(report.loaded_variants().begin(), report.loaded_variants().end());
  for (const v1::ExpertRef& ref : report.dropped()) {
    out.dropped.push_back({ref.layer(), ref.expert()});
  }
  out.residency_in_sync = report.residency_in_sync();
  const v1::WorkerCacheTotals& c = report.counters();
  out.counters = {.routed_tokens = c.routed_tokens(),
                  .hits = c.hits(),
                  .misses = c.misses(),
                  .urgent_loads = c.urgent_loads(),
                  .prefetch_loads = c.prefetch_loads(),
                  .evictions = c.evictions(),
                  .load_bytes = c.load_bytes(),
                  .unplaced = c.unplaced()};
  return out;
}

void ToProto(const LayerLearnedState& state, v1::LayerLearnedState* out) {
  out->set_layer(state.layer);
  out->mutable_affinity()->Add(state.affinity.begin(), state.affinity.end());
  out->mutable_activations()->Add(state.activations.begin(), state.activations.end());
  out->set_tokens(state.tokens);
  out->set_mean_logit_range(state.mean_logit_range);
  out->set_row_top(state.row_top);
  out->mutable_successor_ids()->Add(state.successor_ids.begin(), state.successor_ids.end());
  out->mutable_successor_weights()->Add(state.successor_weights.begin(),
                                        state.successor_weights.end());
}

LayerLearnedState StateFromProto(const v1::LayerLearnedState& state) {
  return LayerLearnedState{
      .layer = state.layer(),
      .affinity = {state.affinity().begin(), state.affinity().end()},
      .activations = {state.activations().begin(), state.activations().end()},
      .tokens = state.tokens(),
      .mean_logit_range = state.mean_logit_range(),
      .row_top = state.row_top(),
      .successor_ids = {state.successor_ids().begin(), state.successor_ids().end()},
      .successor_weights = {state.successor_weights().begin(), state.successor_weights().end()}};
}

void ToProto(const ExpertSizeTable& sizes, v1::FleetUpdate* out) {
  const size_t slots = sizes.bytes().size() / sizes.variants().size();
  for (size_t v = 0; v < sizes.variants().size(); ++v) {
    v1::ExpertSizes* p = out->add_expert_sizes();
    p->set_precision(sizes.variants()[v]);
    p->mutable_bytes()->Add(sizes.bytes().begin() + v * slots,
                            sizes.bytes().begin() + (v + 1) * slots);
  }
}

absl::StatusOr<std::shared_ptr<const ExpertSizeTable>> SizesFromProto(const v1::FleetUpdate& update,
                                                                      uint32_t num_layers,
                                                                      uint32_t num_experts) {
  std::vector<std::string> variants;
  std::vector<uint64_t> bytes;
  for (const v1::ExpertSizes& p : update.expert_sizes()) {
    variants.push_back(p.precision());
    bytes.insert(bytes.end(), p.bytes().begin(), p.bytes().end());
  }
  return ExpertSizeTable::FromSizes(std::move(variants), num_layers, num_experts, std::move(bytes));
}

}  // namespace moe_router
