#include "core/worker/worker_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe_router {

absl::StatusOr<std::unique_ptr<WorkerEngine>> WorkerEngine::Create(
    const ModelConfig& model, std::shared_ptr<const ExpertSizeTable> sizes,
    const WorkerEngineOptions& options) {
  if (absl::Status s = model.Validate(); !s.ok()) return s;
  if (sizes == nullptr) return absl::InvalidArgumentError("a worker engine needs expert sizes");
  if (options.budget_bytes < sizes->smallest()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "worker budget_bytes (%d) is smaller than one expert of model '%s' (%d bytes)",
        options.budget_bytes, model.name, sizes->smallest()));
  }
  const std::string& policy_name =
      options.eviction_policy.empty() ? model.eviction_policy : options.eviction_policy;
  if (absl::Status s = CheckEvictionPolicyName(policy_name); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("worker eviction_policy: ", s.message()));
  }
  // The affinity policy reads the engine's routers (the view is the
  // engine's, so they outlive it); the engine is made after the policy.
  EvictionPolicyOptions policy_options;
  auto owner = std::make_shared<WorkerEngine*>(nullptr);
  policy_options.affinity = [owner](ExpertKey key) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return (*owner)->layers_[key.layer].router->affinity().Score(key.expert);
  };
  policy_options.affinity_version = [owner](uint32_t layer) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return (*owner)->layers_[layer].router->affinity().version();
  };
  auto policy = MakeEvictionPolicy(policy_name, policy_options);
  if (!policy.ok()) return policy.status();
  auto view =
      std::make_unique<WorkerCacheView>(options.cache, model.num_layers, model.router.num_experts,
                                        options.budget_bytes, *std::move(policy), sizes);
  auto engine = std::unique_ptr<WorkerEngine>(
      new WorkerEngine(model, options, std::move(sizes), std::move(view)));
  *owner = engine.get();
  // take_mu_ before mu_, as TakeReport takes them.
  absl::MutexLock take_lock(&engine->take_mu_);
  absl::MutexLock lock(&engine->mu_);
  for (uint32_t l = 0; l < model.num_layers; ++l) {
    auto router = LayerRouter::Create(model.router, model.affinity, model.LayerChoiceBias(l));
    if (!router.ok()) return router.status();
    Layer& layer = engine->layers_[l];
    layer.router = std::make_unique<LayerRouter>(*std::move(router));
  }
  // Dense pair counts into each layer past the first, for the taker.
  const size_t pairs = size_t{model.router.num_experts} * model.router.num_experts;
  engine->pair_counts_.resize(model.num_layers);
  for (uint32_t l = 1; l < model.num_layers; ++l) engine->pair_counts_[l].counts.assign(pairs, 0);
  for (std::vector<uint32_t>& log : engine->pair_logs_) log.reserve(options.pair_log_entries);
  return engine;
}

WorkerEngine::WorkerEngine(const ModelConfig& model, const WorkerEngineOptions& options,
                           std::shared_ptr<const ExpertSizeTable> sizes,
                           std::unique_ptr<WorkerCacheView> view)
    : model_(model),
      options_(options),
      multi_precision_(sizes->variants().size() > 1),
      sizes_(std::move(sizes)),
      view_(std::move(view)) {
  const uint32_t n = model.router.num_experts;
  inboxes_.reserve(model.num_layers);
  for (uint32_t l = 0; l < model.num_layers; ++l) inboxes_.push_back(std::make_unique<Inbox>());
  absl::MutexLock lock(&mu_);
  layers_.resize(model.num_layers);
  report_.layers.resize(model.num_layers);
  for (LayerReport& layer : report_.layers) layer.activations.assign(n, 0);
  residency_at_report_.assign(size_t{model.num_layers} * n, 0);
  successor_sums_.assign(n, 0);
  uses_.assign(n, 0);
}

absl::Status WorkerEngine::CheckLayer(uint32_t layer) const {
  if (layer >= model_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer %d is out of range: model '%s' has %d layers", layer, model_.name,
                        model_.num_layers));
  }
  return absl::OkStatus();
}

uint8_t WorkerEngine::VariantFor(ExpertKey key) const ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (!multi_precision_) return 0;
  const ExpertAffinity& affinity = layers_[key.layer].router->affinity();
  const PrecisionClass c =
      model_.precision.Classify(affinity.FrequencyRatio(key.expert), affinity.updates());
  return sizes_->VariantIndex(model_.precision.PrecisionOf(c));
}

// The per-layer path: fleet state waiting for this layer, the router against
// this worker's residency, the report, then paging as the service pages a
// worker cache.
absl::Status WorkerEngine::Route(uint32_t layer, absl::Span<const float> logits, WorkerStep* out) {
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (inboxes_[layer]->ready.load(std::memory_order_acquire)) ApplyOffer(layer);
  absl::MutexLock view_lock(&view_->mu());
  RouteResult& batch = out->batch;
  if (absl::Status s = layers_[layer].router->Route(logits, view_->ResidentFlags(layer), &batch);
      !s.ok()) {
    return s;
  }
  LogPairs(layer, batch);
  view_->SetLastBatch(layer, batch.experts);
  PredictNextLayer(layer, batch.experts);
  ReserveInstructions(out->cache);
  PageRoutedBatch(
      *view_, layer, batch, predicted_,
      [this](ExpertKey key) ABSL_NO_THREAD_SAFETY_ANALYSIS { return VariantFor(key); },
      &out->cache);
  Record(layer, batch, out->cache);
  return absl::OkStatus();
}

void WorkerEngine::LogPairs(uint32_t layer, const RouteResult& batch) {
  // The same tokens one layer on: this worker's previous call was the layer
  // before, with as many choices.
  if (layer == 0 || view_->last_layer() != layer - 1 ||
      view_->last_choices().size() != batch.experts.size()) {
    return;
  }
  std::vector<uint32_t>& log = pair_logs_[active_log_];
  const size_t choices = batch.experts.size();
  if (log.size() + 3 + 2 * choices > log.capacity()) {
    pairs_dropped_.fetch_add(choices * batch.top_k, std::memory_order_relaxed);
    return;
  }
  // Sequential appends within the reserved room: no counting (and its
  // cache misses over E x E counts per layer) on the routing thread.
  log.push_back(layer);
  log.push_back(batch.tokens);
  log.push_back(batch.top_k);
  log.insert(log.end(), view_->last_choices().begin(), view_->last_choices().end());
  log.insert(log.end(), batch.experts.begin(), batch.experts.end());
}

void WorkerEngine::CountLoggedPairs(std::vector<uint32_t>& log) {
  const uint32_t n = model_.router.num_experts;
  for (size_t at = 0; at + 3 <= log.size();) {
    const uint32_t layer = log[at];
    const uint32_t tokens = log[at + 1];
    const uint32_t k = log[at + 2];
    const uint32_t* prev = &log[at + 3];
    const uint32_t* next = prev + size_t{tokens} * k;
    PairCounts& here = pair_counts_[layer];
    for (uint32_t t = 0; t < tokens; ++t) {
      for (uint32_t i = 0; i < k; ++i) {
        const size_t row = size_t{prev[size_t{t} * k + i]} * n;
        for (uint32_t j = 0; j < k; ++j) {
          const size_t index = row + next[size_t{t} * k + j];
          if (here.counts[index]++ == 0) here.touched.push_back(static_cast<uint32_t>(index));
        }
      }
    }
    at += 3 + 2 * size_t{tokens} * k;
  }
  log.clear();
}

void WorkerEngine::PredictNextLayer(uint32_t layer, absl::Span<const uint32_t> experts) {
  predicted_.clear();
  const uint32_t want = model_.prefetch_next_layer;
  if (layer + 1 >= model_.num_layers || want == 0) return;
  const Layer& next = layers_[layer + 1];
  if (next.row_top == 0) return;  // no fleet state yet
  // Weighted by this batch's uses of each expert, as the service predicts:
  // each used expert's row is read once.
  for (uint32_t e : experts) {
    if (uses_[e]++ == 0) used_experts_.push_back(e);
  }
  for (uint32_t e : used_experts_) {
    const double uses = uses_[e];
    uses_[e] = 0;
    const size_t row = size_t{e} * next.row_top;
    for (uint32_t i = 0; i < next.row_top; ++i) {
      const float w = next.successor_weights[row + i];
      if (w <= 0) break;  // rows are sorted, zero pads
      const uint32_t id = next.successor_ids[row + i];
      if (successor_sums_[id] == 0) predicted_.push_back(id);
      successor_sums_[id] += uses * w;
    }
  }
  used_experts_.clear();
  const auto better = [&](uint32_t a, uint32_t b) {
    return successor_sums_[a] > successor_sums_[b] ||
           (successor_sums_[a] == successor_sums_[b] && a < b);
  };
  const size_t keep = std::min<size_t>(want, predicted_.size());
  std::partial_sort(predicted_.begin(), predicted_.begin() + keep, predicted_.end(), better);
  for (uint32_t id : predicted_) successor_sums_[id] = 0;
  predicted_.resize(keep);
}

void WorkerEngine::Record(uint32_t layer, const RouteResult& batch,
                          const CacheInstructions& changes) {
  LayerReport& r = report_.layers[layer];
  r.tokens += batch.tokens;
  ++r.batches;
  r.hits += batch.hits;
  r.misses += batch.misses;
  r.changed_tokens += batch.changed_tokens;
  r.gate_mass_sum += batch.gate_mass_sum;
  r.gate_mass_min = std::min(r.gate_mass_min, batch.gate_mass_min);
  for (uint32_t e : batch.experts) ++r.activations[e];
  r.range.Then(batch.range_change);
  NoteResidencyChanges(changes);
}

void WorkerEngine::NoteResidencyChanges(const CacheInstructions& changes) {
  const uint32_t n = model_.router.num_experts;
  const auto note = [&](const ExpertKey& key, bool was_resident) {
    const size_t slot = size_t{key.layer} * n + key.expert;
    if (residency_at_report_[slot] != 0) return;
    residency_at_report_[slot] = 1 + static_cast<uint8_t>(was_resident);
    residency_touched_.push_back(slot);
  };
  for (const ExpertKey& key : changes.evictions) note(key, true);
  for (const ExpertKey& key : changes.urgent) note(key, false);
  for (const ExpertKey& key : changes.prefetch) note(key, false);
}

absl::Status WorkerEngine::Prefetch(uint32_t layer, absl::Span<const float> gate_guess,
                                    uint32_t budget, CacheInstructions* out) {
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  const uint32_t n = model_.router.num_experts;
  if (gate_guess.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prefetch gate guess has %d values; model '%s' has %d experts per layer",
                        gate_guess.size(), model_.name, n));
  }
  absl::MutexLock lock(&mu_);
  absl::MutexLock view_lock(&view_->mu());
  // The guess's top experts, ties to the lower id, as the service takes them.
  guess_.resize(n);
  for (uint32_t e = 0; e < n; ++e) guess_[e] = e;
  const uint32_t take = std::min(budget != 0 ? budget : model_.router.top_k, n);
  std::partial_sort(
      guess_.begin(), guess_.begin() + take, guess_.end(), [&](uint32_t a, uint32_t b) {
        return gate_guess[a] > gate_guess[b] || (gate_guess[a] == gate_guess[b] && a < b);
      });
  for (uint32_t i = 0; i < take; ++i) {
    const ExpertKey key{layer, guess_[i]};
    view_->TryAdmit(key, VariantFor(key), Priority::kPrefetch);
  }
  ReserveInstructions(*out);
  view_->EndCall(out);
  NoteResidencyChanges(*out);
  return absl::OkStatus();
}

void WorkerEngine::ReserveInstructions(CacheInstructions& out) const {
  // No call drops or loads more experts than the model has: once the
  // caller's buffers hold that many, no later call allocates, however many
  // experts one step happens to move.
  const size_t experts = size_t{model_.num_layers} * model_.router.num_experts;
  for (std::vector<ExpertKey>* keys : {&out.evictions, &out.urgent, &out.prefetch}) {
    keys->reserve(experts);
  }
}

absl::Status WorkerEngine::Adopt(absl::Span<const ExpertKey> held) {
  for (const ExpertKey& key : held) {
    if (key.layer >= model_.num_layers || key.expert >= model_.router.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrFormat("expert %s is outside model '%s'", key.ToString(), model_.name));
    }
  }
  absl::MutexLock lock(&mu_);
  absl::MutexLock view_lock(&view_->mu());
  std::vector<std::pair<ExpertKey, uint8_t>> with_variants;
  std::vector<ExpertKey> was = view_->ResidentKeys();
  for (const ExpertKey& key : held) {
    with_variants.emplace_back(
        key, view_->IsResident(key) ? view_->ResidentVariant(key) : VariantFor(key));
  }
  if (absl::Status s = view_->Adopt(with_variants); !s.ok()) return s;
  CacheInstructions changes;
  std::sort(was.begin(), was.end());
  std::vector<ExpertKey> now(held.begin(), held.end());
  std::sort(now.begin(), now.end());
  std::set_difference(was.begin(), was.end(), now.begin(), now.end(),
                      std::back_inserter(changes.evictions));
  std::set_difference(now.begin(), now.end(), was.begin(), was.end(),
                      std::back_inserter(changes.urgent));
  NoteResidencyChanges(changes);
  return absl::OkStatus();
}

void WorkerEngine::TakeReport(RoutingReport* out,
                              std::vector<std::pair<ExpertKey, uint8_t>>* residency) {
  absl::MutexLock take_lock(&take_mu_);
  int taken = 0;
  {
    absl::MutexLock lock(&mu_);
    taken = active_log_;
    active_log_ = 1 - active_log_;
    SwapOutReport(out, residency);
  }
  // Routing logs into the other buffer now: this one is the taker's.
  CountLoggedPairs(pair_logs_[taken]);
  for (uint32_t l = 1; l < model_.num_layers; ++l) ListPairs(pair_counts_[l], &out->layers[l]);
}

void WorkerEngine::ListPairs(PairCounts& pairs, LayerReport* out) {
  std::vector<uint32_t>& touched = pairs.touched;
  const uint32_t cap = options_.max_pairs_per_layer;
  if (cap != 0 && touched.size() > cap) {
    // The strongest pairs, ties to the lower index.
    const auto stronger = [&](uint32_t a, uint32_t b) {
      return pairs.counts[a] > pairs.counts[b] || (pairs.counts[a] == pairs.counts[b] && a < b);
    };
    std::nth_element(touched.begin(), touched.begin() + cap, touched.end(), stronger);
    uint64_t dropped = 0;
    for (auto it = touched.begin() + cap; it != touched.end(); ++it) {
      dropped += pairs.counts[*it];
      pairs.counts[*it] = 0;
    }
    pairs_dropped_.fetch_add(dropped, std::memory_order_relaxed);
    touched.resize(cap);
  }
  std::sort(touched.begin(), touched.end());
  for (uint32_t index : touched) {
    out->pair_index.push_back(index);
    out->pair_count.push_back(pairs.counts[index]);
    pairs.counts[index] = 0;
  }
  touched.clear();
}

void WorkerEngine::SwapOutReport(RoutingReport* out,
                                 std::vector<std::pair<ExpertKey, uint8_t>>* residency) {
  absl::MutexLock view_lock(&view_->mu());
  if (residency != nullptr) ListResidency(residency);
  const uint32_t n = model_.router.num_experts;
  report_.sequence = next_sequence_++;
  // Residency: net changes since the last report.
  std::sort(residency_touched_.begin(), residency_touched_.end());
  for (size_t slot : residency_touched_) {
    const ExpertKey key{static_cast<uint32_t>(slot / n), static_cast<uint32_t>(slot % n)};
    const bool was = residency_at_report_[slot] == 2;
    residency_at_report_[slot] = 0;
    const bool now = view_->IsResident(key);
    if (was == now) continue;
    if (now) {
      report_.loaded.push_back(key);
      report_.loaded_variants.push_back(view_->ResidentVariant(key));
    } else {
      report_.dropped.push_back(key);
    }
  }
  residency_touched_.clear();
  report_.counters = view_->counters().Minus(counters_at_report_);
  counters_at_report_ = view_->counters();
  report_.residency_in_sync = false;
  // Keep what the routers learned, to re-apply over fleet state that has
  // not folded this report in yet; the oldest entry's buffers are reused.
  Learning learning;
  if (unacknowledged_.size() >= std::max<uint32_t>(options_.max_unacknowledged_reports, 1)) {
    learning = std::move(unacknowledged_.front());
    unacknowledged_.pop_front();
  }
  learning.sequence = report_.sequence;
  learning.layers.resize(model_.num_layers);
  for (uint32_t l = 0; l < model_.num_layers; ++l) {
    LayerReport& kept = learning.layers[l];
    const LayerReport& r = report_.layers[l];
    kept.tokens = r.tokens;
    kept.activations = r.activations;
    kept.range = r.range;
  }
  unacknowledged_.push_back(std::move(learning));

  std::swap(*out, report_);
  report_.loaded.clear();
  report_.loaded_variants.clear();
  report_.dropped.clear();
  report_.layers.resize(model_.num_layers);
  for (LayerReport& layer : report_.layers) {
    layer.Clear();
    layer.activations.resize(n, 0);
  }
}

std::vector<std::pair<ExpertKey, uint8_t>> WorkerEngine::Residency() {
  absl::MutexLock lock(&mu_);
  absl::MutexLock view_lock(&view_->mu());
  std::vector<std::pair<ExpertKey, uint8_t>> held;
  ListResidency(&held);
  return held;
}

void WorkerEngine::ListResidency(std::vector<std::pair<ExpertKey, uint8_t>>* out) {
  out->clear();
  for (const ExpertKey& key : view_->ResidentKeys()) {
    out->emplace_back(key, view_->ResidentVariant(key));
  }
}

void WorkerEngine::Offer(std::vector<LayerLearnedState> layers, uint64_t acknowledged) {
  for (LayerLearnedState& state : layers) {
    if (state.layer >= model_.num_layers) continue;
    Inbox& inbox = *inboxes_[state.layer];
    auto boxed = std::make_unique<LayerLearnedState>(std::move(state));
    absl::MutexLock lock(&inbox.mu);
    inbox.state = std::move(boxed);
    inbox.acknowledged = acknowledged;
    inbox.ready.store(true, std::memory_order_release);
  }
}

void WorkerEngine::ApplyOffer(uint32_t l) {
  Inbox& inbox = *inboxes_[l];
  std::unique_ptr<LayerLearnedState> state;
  uint64_t acknowledged = 0;
  {
    absl::MutexLock lock(&inbox.mu);
    state = std::move(inbox.state);
    acknowledged = inbox.acknowledged;
    inbox.ready.store(false, std::memory_order_relaxed);
  }
  if (state == nullptr) return;
  const uint32_t n = model_.router.num_experts;
  if (state->affinity.size() != n || state->activations.size() != n) return;
  Layer& layer = layers_[l];
  ExpertAffinity& affinity = layer.router->mutable_affinity();
  ExpertAffinity::State imported{.scores = std::move(state->affinity),
                                 .counts = std::move(state->activations),
                                 .updates = state->tokens};
  if (!affinity.Import(imported).ok()) return;
  layer.router->RestoreMeanLogitRange(state->mean_logit_range);
  // This worker's own learning that the fleet state does not include yet:
  // the reports after the acknowledged one, then the report being gathered.
  const auto reapply = [&](const LayerReport& mine) {
    affinity.FoldActivations(mine.tokens, mine.activations);
    layer.router->ApplyRangeChange(mine.range);
  };
  for (const Learning& learning : unacknowledged_) {
    if (learning.sequence > acknowledged) reapply(learning.layers[l]);
  }
  reapply(report_.layers[l]);
  if (l > 0 && state->row_top > 0 && state->successor_ids.size() == size_t{n} * state->row_top &&
      state->successor_weights.size() == state->successor_ids.size()) {
    layer.row_top = state->row_top;
    layer.successor_ids = std::move(state->successor_ids);
    layer.successor_weights = std::move(state->successor_weights);
  }
  state_updates_applied_.fetch_add(1, std::memory_order_relaxed);
}

ExpertAffinity::State WorkerEngine::LayerAffinity(uint32_t layer) {
  absl::MutexLock lock(&mu_);
  return layers_[layer].router->affinity().Export();
}

std::string WorkerEngine::policy_name() {
  absl::MutexLock view_lock(&view_->mu());
  return view_->policy_name();
}

WorkerCacheCounters WorkerEngine::counters() {
  absl::MutexLock view_lock(&view_->mu());
  return view_->counters();
}

uint64_t WorkerEngine::last_sequence() {
  absl::MutexLock lock(&mu_);
  return next_sequence_ - 1;
}

}  // namespace moe_router
