// ModelEngine's learning from workers' reports and its learned state as
// JSON: apart from the routing and paging of model_engine.cc.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/json_number.h"
#include "core/engine/model_engine.h"
#include "nlohmann/json.hpp"

namespace moe_router {

absl::Status ModelEngine::FoldReport(const std::string& cache, const RoutingReport& report,
                                     uint64_t worker) {
  if (absl::Status s = ValidateReport(report, config_.num_layers, config_.router.num_experts,
                                      config_.router.top_k, sizes_->variants().size());
      !s.ok()) {
    return s;
  }
  auto view = FindCache(cache);
  if (!view.ok()) return view.status();
  {
    WorkerCacheView& v = **view;
    absl::MutexLock lock(&v.mu());
    v.Touch(absl::Now());
    if (worker != 0 && v.last_folded().worker == worker &&
        report.sequence <= v.last_folded().sequence) {
      metrics_->RecordResentReport();
      return absl::OkStatus();  // folded already; its acknowledgement was lost
    }
    if (!report.residency_in_sync && !(report.loaded.empty() && report.dropped.empty())) {
      std::vector<std::pair<ExpertKey, uint8_t>> held;
      for (const ExpertKey& key : v.ResidentKeys()) {
        if (!std::binary_search(report.dropped.begin(), report.dropped.end(), key)) {
          held.emplace_back(key, v.ResidentVariant(key));
        }
      }
      for (size_t i = 0; i < report.loaded.size(); ++i) {
        if (!v.IsResident(report.loaded[i])) {
          held.emplace_back(report.loaded[i], report.loaded_variants[i]);
        }
      }
      if (absl::Status s = v.Adopt(held); !s.ok()) return s;
    }
    v.AddCounters(report.counters);
    // Recorded under the view's lock: the rest of the fold cannot fail.
    v.set_last_folded({.worker = worker, .sequence = report.sequence});
  }
  metrics_->RecordWorkerCall(report.counters);
  for (uint32_t l = 0; l < config_.num_layers; ++l) {
    const LayerReport& r = report.layers[l];
    if (r.empty()) continue;
    Layer& layer = *layers_[l];
    absl::MutexLock lock(&layer.mu);
    layer.router->mutable_affinity().FoldActivations(r.tokens, r.activations);
    layer.router->ApplyRangeChange(r.range);
    if (layer.from_previous != nullptr) {
      layer.from_previous->FoldPairs(r.pair_index, r.pair_count, config_.router.top_k);
    }
    layer.tokens_since_reclassify += r.tokens;
    metrics_->RecordReportedRoute(l, r.tokens, r.hits, r.misses, r.changed_tokens, r.gate_mass_sum,
                                  r.gate_mass_min);
  }
  return absl::OkStatus();
}

uint64_t ModelEngine::LastFolded(const std::string& cache, uint64_t worker) const {
  auto view = FindCache(cache);
  if (!view.ok() || worker == 0) return 0;
  absl::MutexLock lock(&(*view)->mu());
  const WorkerCacheView::FoldedReport& last = (*view)->last_folded();
  return last.worker == worker ? last.sequence : 0;
}

LayerLearnedState ModelEngine::ExportLayerState(uint32_t l, uint32_t row_top) const {
  const Layer& layer = *layers_[l];
  absl::MutexLock lock(&layer.mu);
  ExpertAffinity::State a = layer.router->affinity().Export();
  LayerLearnedState state{.layer = l,
                          .affinity = std::move(a.scores),
                          .activations = std::move(a.counts),
                          .tokens = a.updates,
                          .mean_logit_range = layer.router->mean_logit_range(),
                          .row_top = 0,
                          .successor_ids = {},
                          .successor_weights = {}};
  if (layer.from_previous != nullptr) {
    state.row_top = std::min(row_top, config_.router.num_experts);
    layer.from_previous->TopPerRow(state.row_top, &state.successor_ids, &state.successor_weights);
  }
  return state;
}

std::string ModelEngine::ExportState() const {
  nlohmann::json layers = nlohmann::json::array();
  for (uint32_t l = 0; l < config_.num_layers; ++l) {
    const Layer& layer = *layers_[l];
    absl::MutexLock lock(&layer.mu);
    const ExpertAffinity::State a = layer.router->affinity().Export();
    nlohmann::json entry = {{"affinity_scores", a.scores},
                            {"activation_counts", a.counts},
                            {"tokens", a.updates},
                            {"mean_logit_range", layer.router->mean_logit_range()}};
    if (layer.from_previous != nullptr) entry["coactivation"] = layer.from_previous->ExportMatrix();
    layers.push_back(std::move(entry));
  }
  const nlohmann::json state = {{"format", "moe-router-state/1"},
                                {"model", config_.name},
                                {"num_layers", config_.num_layers},
                                {"num_experts", config_.router.num_experts},
                                {"layers", std::move(layers)}};
  return state.dump();
}

absl::Status ModelEngine::ImportState(absl::string_view text) {
  const nlohmann::json json =
      nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrFormat("state of model '%s' is unusable: %s", config_.name, why));
  };
  if (json.is_discarded() || !json.is_object()) return bad("not a JSON object");
  // Comparisons, not value<T>(): a field of another type must be a refusal,
  // not a type_error thrown through the server.
  const auto field_is = [&](const char* name, const nlohmann::json& expected) {
    const auto it = json.find(name);
    return it != json.end() && *it == expected;
  };
  if (!field_is("format", "moe-router-state/1")) return bad("unknown format");
  if (!field_is("num_layers", config_.num_layers) ||
      !field_is("num_experts", config_.router.num_experts)) {
    return bad("it was saved for another model shape");
  }
  const auto layers = json.find("layers");
  if (layers == json.end() || !layers->is_array() || layers->size() != config_.num_layers) {
    return bad("layers missing or of the wrong count");
  }
  // Parse everything first, so a bad layer changes nothing.
  std::vector<ExpertAffinity::State> affinity(config_.num_layers);
  std::vector<std::vector<double>> coactivation(config_.num_layers);
  // Absent from files saved before it was kept: the range is learned anew.
  std::vector<double> ranges(config_.num_layers, 0.0);
  try {
    for (uint32_t l = 0; l < config_.num_layers; ++l) {
      const nlohmann::json& entry = (*layers)[l];
      affinity[l].scores = entry.at("affinity_scores").get<std::vector<double>>();
      auto counts = JsonIntegers<uint64_t>(entry.at("activation_counts"),
                                           absl::StrFormat("layer %d activation_counts", l));
      if (!counts.ok()) return bad(std::string(counts.status().message()));
      affinity[l].counts = *std::move(counts);
      auto tokens =
          JsonInteger<uint64_t>(entry.at("tokens"), absl::StrFormat("layer %d tokens", l));
      if (!tokens.ok()) return bad(std::string(tokens.status().message()));
      affinity[l].updates = *tokens;
      if (l > 0) coactivation[l] = entry.at("coactivation").get<std::vector<double>>();
      if (entry.contains("mean_logit_range")) {
        ranges[l] = entry.at("mean_logit_range").get<double>();
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  // Dry-run the imports on scratch objects to validate values.
  for (uint32_t l = 0; l < config_.num_layers; ++l) {
    if (!(ranges[l] >= 0) || !std::isfinite(ranges[l])) {
      return bad(
          absl::StrFormat("layer %d: mean_logit_range %g is not a finite range", l, ranges[l]));
    }
    ExpertAffinity scratch(config_.router.num_experts, config_.affinity);
    if (absl::Status s = scratch.Import(affinity[l]); !s.ok()) {
      return bad(absl::StrFormat("layer %d: %s", l, s.message()));
    }
    if (l > 0) {
      CoActivation co(config_.router.num_experts, config_.router.num_experts, 1.0);
      if (absl::Status s = co.ImportMatrix(coactivation[l]); !s.ok()) {
        return bad(absl::StrFormat("layer %d: %s", l, s.message()));
      }
    }
  }
  for (uint32_t l = 0; l < config_.num_layers; ++l) {
    Layer& layer = *layers_[l];
    absl::MutexLock lock(&layer.mu);
    layer.router->mutable_affinity().Import(affinity[l]).IgnoreError();  // validated above
    layer.router->RestoreMeanLogitRange(ranges[l]);
    if (l > 0) layer.from_previous->ImportMatrix(coactivation[l]).IgnoreError();
  }
  return absl::OkStatus();
}

}  // namespace moe_router
