#include "core/model/learned_state.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace moe_router {

void LayerReport::Clear() {
  tokens = batches = hits = misses = changed_tokens = 0;
  gate_mass_sum = 0;
  gate_mass_min = 1;
  std::fill(activations.begin(), activations.end(), 0);
  pair_index.clear();
  pair_count.clear();
  range = {};
}

namespace {

absl::Status CheckKey(ExpertKey key, uint32_t num_layers, uint32_t num_experts, const char* what) {
  if (key.layer >= num_layers || key.expert >= num_experts) {
    return absl::InvalidArgumentError(
        absl::StrFormat("report: %s expert %s is outside the model's %d layers x %d experts", what,
                        key.ToString(), num_layers, num_experts));
  }
  return absl::OkStatus();
}

absl::Status ValidateLayer(const LayerReport& layer, uint32_t l, uint32_t num_experts,
                           uint32_t top_k) {
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("report: layer %d: %s", l, why));
  };
  if (layer.activations.size() != num_experts && !(layer.empty() && layer.activations.empty())) {
    return bad(absl::StrFormat("%d activation counts, expected one per expert (%d)",
                               layer.activations.size(), num_experts));
  }
  uint64_t activations = 0;
  for (uint32_t c : layer.activations) activations += c;
  if (activations != layer.tokens * top_k) {
    return bad(absl::StrFormat("%d activations for %d tokens of top_k %d", activations,
                               layer.tokens, top_k));
  }
  if (layer.hits + layer.misses != activations) {
    return bad(absl::StrFormat("hits (%d) and misses (%d) do not add up to the activations (%d)",
                               layer.hits, layer.misses, activations));
  }
  if (layer.changed_tokens > layer.tokens || layer.batches > layer.tokens) {
    return bad("more changed tokens or batches than tokens");
  }
  if (layer.pair_index.size() != layer.pair_count.size()) {
    return bad(absl::StrFormat("%d pair indices but %d pair counts", layer.pair_index.size(),
                               layer.pair_count.size()));
  }
  if (l == 0 && !layer.pair_index.empty()) return bad("layer 0 has no previous layer to pair");
  const uint64_t pairs = uint64_t{num_experts} * num_experts;
  uint64_t paired = 0;
  for (size_t i = 0; i < layer.pair_index.size(); ++i) {
    if (layer.pair_index[i] >= pairs) {
      return bad(absl::StrFormat("pair index %d is past %d experts squared", layer.pair_index[i],
                                 num_experts));
    }
    paired += layer.pair_count[i];
  }
  if (paired > layer.tokens * uint64_t{top_k} * top_k) {
    return bad(absl::StrFormat("%d co-activation pairs for %d tokens of top_k %d", paired,
                               layer.tokens, top_k));
  }
  const bool range_ok = layer.range.keep >= 0 && layer.range.keep <= 1 &&
                        std::isfinite(layer.range.add) && layer.range.add >= 0;
  if (!range_ok) {
    return bad(absl::StrFormat("logit range change (keep %g, add %g) is not an EMA step",
                               layer.range.keep, layer.range.add));
  }
  if (!(layer.gate_mass_min >= 0 && layer.gate_mass_min <= 1) ||
      !(layer.gate_mass_sum >= 0 && layer.gate_mass_sum <= layer.tokens * (1 + 1e-6))) {
    return bad("gate mass outside [0, 1] per token");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateReport(const RoutingReport& report, uint32_t num_layers, uint32_t num_experts,
                            uint32_t top_k, size_t num_variants) {
  if (report.layers.size() != num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat("report has %d layers; the model has %d",
                                                      report.layers.size(), num_layers));
  }
  for (uint32_t l = 0; l < num_layers; ++l) {
    if (absl::Status s = ValidateLayer(report.layers[l], l, num_experts, top_k); !s.ok()) return s;
  }
  if (report.loaded.size() != report.loaded_variants.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("report has %d loaded experts but %d variants", report.loaded.size(),
                        report.loaded_variants.size()));
  }
  for (const ExpertKey& key : report.loaded) {
    if (absl::Status s = CheckKey(key, num_layers, num_experts, "loaded"); !s.ok()) return s;
  }
  for (uint8_t variant : report.loaded_variants) {
    if (variant >= num_variants) {
      return absl::InvalidArgumentError(
          absl::StrFormat("report: loaded variant %d, but the store has %d precision variants",
                          variant, num_variants));
    }
  }
  for (const ExpertKey& key : report.dropped) {
    if (absl::Status s = CheckKey(key, num_layers, num_experts, "dropped"); !s.ok()) return s;
  }
  if (!std::is_sorted(report.dropped.begin(), report.dropped.end())) {
    return absl::InvalidArgumentError("report: dropped experts must be in ascending order");
  }
  return absl::OkStatus();
}

}  // namespace moe_router
