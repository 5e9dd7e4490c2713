#include "core/engine/model_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "core/base/resource_name.h"
#include "core/engine/model_footprint.h"
#include "core/model/page_routed_batch.h"

namespace moe_router {

absl::StatusOr<std::unique_ptr<ModelEngine>> ModelEngine::Create(
    const ModelConfig& config, std::shared_ptr<const ExpertStore> store) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (store == nullptr) return absl::InvalidArgumentError("model needs an expert store");
  auto model = std::unique_ptr<ModelEngine>(new ModelEngine(config, std::move(store)));
  for (uint32_t l = 0; l < config.num_layers; ++l) {
    auto router = LayerRouter::Create(config.router, config.affinity, config.LayerChoiceBias(l));
    if (!router.ok()) return router.status();
    auto layer = std::make_unique<Layer>();
    absl::MutexLock lock(&layer->mu);
    layer->router = std::make_unique<LayerRouter>(*std::move(router));
    layer->affinity = &layer->router->affinity();
    if (l > 0) {
      layer->from_previous = std::make_unique<CoActivation>(
          config.router.num_experts, config.router.num_experts, config.affinity.coactivation_decay);
    }
    model->layers_.push_back(std::move(layer));
  }
  EvictionPolicyOptions options;
  ModelEngine* self = model.get();
  options.affinity = [self](ExpertKey key) {
    return self->layers_[key.layer]->affinity->Score(key.expert);
  };
  options.affinity_version = [self](uint32_t layer) {
    return self->layers_[layer]->affinity->version();
  };
  auto policy = MakeEvictionPolicy(config.eviction_policy, options);
  if (!policy.ok()) return policy.status();
  ModelMetrics* metrics = model->metrics_.get();
  auto cache = ExpertCache::Create(CacheConfig{.num_layers = config.num_layers,
                                               .num_experts = config.router.num_experts,
                                               .budget_bytes = config.budget_bytes},
                                   *std::move(policy),
                                   [metrics](ExpertKey key) { metrics->RecordPageOut(key); });
  if (!cache.ok()) return cache.status();
  model->cache_ = *std::move(cache);
  auto pool = PagingPool::Create(
      model->cache_.get(), model->store_, [self](ExpertKey key) { return self->PrecisionFor(key); },
      metrics, config.paging);
  if (!pool.ok()) return pool.status();
  model->pool_ = *std::move(pool);
  auto sizes = ExpertSizeTable::Build(*model->store_, config.num_layers, config.router.num_experts);
  if (!sizes.ok()) return sizes.status();
  model->sizes_ = *std::move(sizes);
  if (const uint64_t largest = model->sizes_->largest(); largest > config.budget_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model.budget_bytes (%d) is smaller than the largest expert of the store (%d bytes)",
        config.budget_bytes, largest));
  }
  model->worker_caches_ = std::make_unique<WorkerCacheSet>(
      config.name, config.num_layers, config.router.num_experts, model->sizes_,
      config.worker_caches, config.eviction_policy, options);
  return model;
}

ModelEngine::ModelEngine(const ModelConfig& config, std::shared_ptr<const ExpertStore> store)
    : config_(config),
      store_(std::move(store)),
      multi_precision_(store_->Precisions().size() > 1),
      metrics_(std::make_unique<ModelMetrics>(config.num_layers, config.targets)) {}

ModelEngine::~ModelEngine() { Shutdown(); }

void ModelEngine::Shutdown() {
  if (pool_ != nullptr) pool_->Shutdown();
}

absl::Status ModelEngine::CheckLayer(uint32_t layer) const {
  if (layer >= config_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer %d is out of range: model '%s' has %d layers", layer, config_.name,
                        config_.num_layers));
  }
  return absl::OkStatus();
}

PrecisionClass ModelEngine::ClassOf(ExpertKey key) const {
  const ExpertAffinity& affinity = *layers_[key.layer]->affinity;
  return config_.precision.Classify(affinity.FrequencyRatio(key.expert), affinity.updates());
}

std::string ModelEngine::PrecisionFor(ExpertKey key) const {
  const std::vector<std::string> variants = store_->Precisions();
  if (multi_precision_) {
    const std::string& wanted = config_.precision.PrecisionOf(ClassOf(key));
    if (std::find(variants.begin(), variants.end(), wanted) != variants.end()) return wanted;
  }
  return variants.front();
}

void ModelEngine::QueuePrefetch(uint32_t layer, absl::Span<const uint32_t> experts,
                                std::vector<ExpertKey>* queued) {
  for (uint32_t e : experts) {
    const ExpertKey key{layer, e};
    if (cache_->IsResident(key)) continue;
    pool_->PageIn(key, Priority::kPrefetch);
    metrics_->RecordPrefetch(key, /*dropped=*/false);
    queued->push_back(key);
  }
}

absl::StatusOr<RouteOutcome> ModelEngine::Route(uint32_t layer, absl::Span<const float> logits,
                                                const std::string& cache) {
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  std::shared_ptr<WorkerCacheView> view;
  if (!cache.empty()) {
    auto found = FindCache(cache);
    if (!found.ok()) return found.status();
    view = *std::move(found);
  }
  const auto start = std::chrono::steady_clock::now();
  RouteOutcome out;
  absl::StatusOr<bool> reclassify = false;
  if (view == nullptr) {
    reclassify = RouteAndLearn(layer, logits, nullptr, &out.batch);
    if (!reclassify.ok()) return reclassify.status();
    PageForServer(layer, &out);
  } else {
    absl::MutexLock lock(&view->mu());
    view->Touch(absl::Now());
    reclassify = RouteAndLearn(layer, logits, view.get(), &out.batch);
    if (!reclassify.ok()) return reclassify.status();
    PageForWorker(*view, layer, &out);
  }
  if (*reclassify) RepageChangedClasses(layer);

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  metrics_->RecordRoute(layer, out.batch.tokens, out.batch.hits, out.batch.misses,
                        out.batch.changed_tokens, out.batch.gate_mass_sum, out.batch.gate_mass_min,
                        seconds);
  return out;
}

void ModelEngine::PageForServer(uint32_t layer, RouteOutcome* out) {
  std::vector<uint8_t> seen(config_.router.num_experts, 0);
  std::vector<uint32_t> chosen;
  for (uint32_t e : out->batch.experts) {
    if (seen[e]++ == 0) chosen.push_back(e);
  }
  // No layer lock held. Chosen experts stay pinned while this route is in
  // flight.
  for (uint32_t e : chosen) {
    const ExpertKey key{layer, e};
    if (!cache_->Pin(key)) {
      pool_->PageIn(key, Priority::kUrgent);
      out->urgent.push_back(key);
    }
  }
  QueuePrefetch(layer, out->batch.prefetch, &out->prefetch);
  if (layer + 1 < config_.num_layers) {
    QueuePrefetch(layer + 1, PredictNextLayer(layer, UsesByExpert(out->batch.experts)),
                  &out->prefetch);
  }
  for (uint32_t e : chosen) cache_->Unpin({layer, e});
}

void ModelEngine::PageForWorker(WorkerCacheView& view, uint32_t layer, RouteOutcome* out) {
  const WorkerCacheCounters before = view.counters();
  CacheInstructions instructions;
  PageRoutedBatch(
      view, layer, out->batch, PredictNextLayer(layer, UsesByExpert(out->batch.experts)),
      [this](ExpertKey key) { return VariantFor(key); }, &instructions);
  out->urgent = std::move(instructions.urgent);
  out->prefetch = std::move(instructions.prefetch);
  out->evictions = std::move(instructions.evictions);
  metrics_->RecordWorkerCall(view.counters().Minus(before));
  StageForWorker(out->urgent);
  StageForWorker(out->prefetch);
}

void ModelEngine::StageForWorker(absl::Span<const ExpertKey> loads) {
  for (const ExpertKey& key : loads) {
    if (!cache_->IsResident(key)) pool_->PageIn(key, Priority::kPrefetch);
  }
}

std::vector<uint32_t> ModelEngine::UsesByExpert(absl::Span<const uint32_t> experts) const {
  std::vector<uint32_t> uses(config_.router.num_experts, 0);
  for (uint32_t e : experts) ++uses[e];
  return uses;
}

uint8_t ModelEngine::VariantFor(ExpertKey key) const {
  return multi_precision_ ? sizes_->VariantIndex(PrecisionFor(key)) : 0;
}

absl::StatusOr<bool> ModelEngine::RouteAndLearn(uint32_t layer, absl::Span<const float> logits,
                                                WorkerCacheView* view, RouteResult* result) {
  const uint32_t n = config_.router.num_experts;
  const uint32_t k = config_.router.top_k;
  // The same caller's previous batch, to learn co-activation when this batch
  // is the same tokens one layer on. Copied so no two layer locks nest.
  const size_t expected = logits.size() / n * k;
  std::vector<uint32_t> prev;
  if (view != nullptr) {
    if (layer > 0 && view->last_layer() == layer - 1 && view->last_choices().size() == expected) {
      prev = view->last_choices();
    }
  } else if (layer > 0) {
    Layer& before = *layers_[layer - 1];
    absl::MutexLock lock(&before.mu);
    if (before.last_choices.size() == expected) prev = before.last_choices;
  }
  Layer& here = *layers_[layer];
  absl::MutexLock lock(&here.mu);
  const std::atomic<uint8_t>* resident =
      view != nullptr ? view->ResidentFlags(layer) : cache_->ResidentFlags(layer);
  if (absl::Status s = here.router->Route(logits, resident, result); !s.ok()) {
    metrics_->RecordRouteError();
    return s;
  }
  if (view != nullptr) {
    view->SetLastBatch(layer, result->experts);
  } else {
    cache_->BeginStep(layer, result->tokens);
    // Copied only for a policy that touches a step in an order of its own.
    absl::Span<const uint32_t> touched = result->experts;
    if (cache_->step_order() != StepOrder::kAsRouted) {
      thread_local std::vector<uint32_t> arranged;
      arranged.assign(result->experts.begin(), result->experts.end());
      ArrangeStep(cache_->step_order(), arranged, [&](uint32_t e) {
        return cache_->IsResident({layer, e});
      });
      touched = arranged;
    }
    for (uint32_t e : touched) cache_->Access({layer, e});
    here.last_choices = result->experts;
  }
  if (here.from_previous != nullptr && prev.size() == result->experts.size()) {
    for (uint32_t t = 0; t < result->tokens; ++t) {
      here.from_previous->Update(absl::MakeConstSpan(prev).subspan(size_t{t} * k, k),
                                 result->TokenExperts(t));
    }
  }
  here.tokens_since_reclassify += result->tokens;
  if (multi_precision_ && here.tokens_since_reclassify >= config_.precision.warmup_tokens) {
    here.tokens_since_reclassify = 0;
    return true;
  }
  return false;
}

std::vector<uint32_t> ModelEngine::PredictNextLayer(uint32_t layer,
                                                    absl::Span<const uint32_t> uses_by_expert) {
  if (layer + 1 >= config_.num_layers || config_.prefetch_next_layer == 0) return {};
  const std::vector<double> weights(uses_by_expert.begin(), uses_by_expert.end());
  Layer& next = *layers_[layer + 1];
  absl::MutexLock lock(&next.mu);
  return next.from_previous->PredictWeighted(weights, config_.prefetch_next_layer);
}

void ModelEngine::RepageChangedClasses(uint32_t layer) {
  for (uint32_t e = 0; e < config_.router.num_experts; ++e) {
    const ExpertKey key{layer, e};
    const std::string resident = cache_->ResidentPrecision(key);
    if (!resident.empty() && resident != PrecisionFor(key)) pool_->Repage(key);
  }
}

absl::StatusOr<PrefetchOutcome> ModelEngine::Prefetch(const PrefetchQuery& query) {
  const uint32_t layer = query.layer;
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  const uint32_t n = config_.router.num_experts;
  for (uint32_t e : query.experts) {
    if (absl::Status s = CheckExpert({layer, e}); !s.ok()) return s;
  }
  if (!query.gate_logits.empty() && query.gate_logits.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prefetch gate_logits has %d values; model '%s' has %d experts per layer",
                        query.gate_logits.size(), config_.name, n));
  }
  std::shared_ptr<WorkerCacheView> view;
  if (!query.cache.empty()) {
    auto found = FindCache(query.cache);
    if (!found.ok()) return found.status();
    view = *std::move(found);
  }
  if (view != nullptr) {
    absl::MutexLock lock(&view->mu());
    view->Touch(absl::Now());
    return PrefetchForWorker(*view, layer, PrefetchCandidates(query, view.get()));
  }
  std::vector<uint32_t> candidates = PrefetchCandidates(query, nullptr);
  PrefetchOutcome out;
  std::vector<uint8_t> seen(n, 0);
  for (uint32_t e : candidates) {
    if (seen[e]++) continue;
    const ExpertKey key{layer, e};
    if (cache_->IsResident(key)) {
      out.already_resident.push_back(e);
      continue;
    }
    absl::StatusOr<ExpertInfo> info = store_->Info(key, PrecisionFor(key));
    if (!info.ok()) return info.status();
    const absl::Status admit = cache_->CanAdmit(key, info->bytes, Priority::kPrefetch);
    if (!admit.ok() && !absl::IsAlreadyExists(admit)) {
      out.dropped.push_back(e);
      metrics_->RecordPrefetch(key, /*dropped=*/true);
      continue;
    }
    pool_->PageIn(key, Priority::kPrefetch);
    metrics_->RecordPrefetch(key, /*dropped=*/false);
    out.queued.push_back(e);
  }
  return out;
}

std::vector<uint32_t> ModelEngine::PrefetchCandidates(const PrefetchQuery& query,
                                                      WorkerCacheView* view) {
  const uint32_t n = config_.router.num_experts;
  const uint32_t layer = query.layer;
  const uint32_t budget = std::min(query.budget, n);
  if (!query.experts.empty()) return {query.experts.begin(), query.experts.end()};
  if (!query.gate_logits.empty()) {
    // The worker's guess of the gate: its top experts, ties to the lower id.
    std::vector<uint32_t> order(n);
    for (uint32_t e = 0; e < n; ++e) order[e] = e;
    const uint32_t take = budget != 0 ? budget : config_.router.top_k;
    std::partial_sort(order.begin(), order.begin() + take, order.end(),
                      [&](uint32_t a, uint32_t b) {
                        return query.gate_logits[a] > query.gate_logits[b] ||
                               (query.gate_logits[a] == query.gate_logits[b] && a < b);
                      });
    order.resize(take);
    return order;
  }
  // Co-activation with the same caller's previous batch first, then the
  // layer's own affinity.
  std::vector<uint32_t> candidates;
  if (layer > 0) {
    std::vector<double> weights(n, 0);
    if (view != nullptr) {
      if (view->last_layer() == layer - 1) {
        for (uint32_t e : view->last_choices()) weights[e] += 1;
      }
    } else {
      Layer& before = *layers_[layer - 1];
      absl::MutexLock lock(&before.mu);
      for (uint32_t e : before.last_choices) weights[e] += 1;
    }
    Layer& here = *layers_[layer];
    absl::MutexLock lock(&here.mu);
    candidates = here.from_previous->PredictWeighted(weights, budget);
  }
  for (uint32_t e : layers_[layer]->affinity->TopByAffinity(budget)) {
    if (candidates.size() >= budget) break;
    if (std::find(candidates.begin(), candidates.end(), e) == candidates.end()) {
      candidates.push_back(e);
    }
  }
  return candidates;
}

absl::StatusOr<PrefetchOutcome> ModelEngine::PrefetchForWorker(
    WorkerCacheView& view, uint32_t layer, absl::Span<const uint32_t> candidates) {
  const WorkerCacheCounters before = view.counters();
  PrefetchOutcome out;
  std::vector<uint8_t> seen(config_.router.num_experts, 0);
  std::vector<uint32_t> tried;
  for (uint32_t e : candidates) {
    if (seen[e]++) continue;
    const ExpertKey key{layer, e};
    if (view.IsResident(key)) {
      out.already_resident.push_back(e);
      continue;
    }
    view.Admit(key, VariantFor(key), Priority::kPrefetch).IgnoreError();
    tried.push_back(e);
  }
  CacheInstructions instructions = view.EndCall();
  // An expert admitted and then displaced by a later one of the same call
  // was never the worker's to load: it counts as dropped.
  for (uint32_t e : tried) {
    const bool loaded = std::binary_search(instructions.prefetch.begin(),
                                           instructions.prefetch.end(), ExpertKey{layer, e});
    (loaded ? out.queued : out.dropped).push_back(e);
  }
  out.evictions = std::move(instructions.evictions);
  metrics_->RecordWorkerCall(view.counters().Minus(before));
  StageForWorker(instructions.prefetch);
  return out;
}

absl::StatusOr<std::shared_ptr<WorkerCacheView>> ModelEngine::FindCache(
    const std::string& cache) const {
  return worker_caches_->Find(cache);
}

absl::StatusOr<WorkerCacheInfo> ModelEngine::OpenCache(const std::string& cache,
                                                       uint64_t budget_bytes,
                                                       const std::string& policy) {
  return worker_caches_->Open(cache, budget_bytes, policy, absl::Now());
}

absl::Status ModelEngine::CloseCache(const std::string& cache) {
  return worker_caches_->Close(cache);
}

size_t ModelEngine::CloseIdleCaches(absl::Time now) { return worker_caches_->CloseIdle(now); }

absl::StatusOr<WorkerCacheInfo> ModelEngine::SyncCache(const std::string& cache,
                                                       absl::Span<const ExpertKey> resident) {
  for (const ExpertKey& key : resident) {
    if (absl::Status s = CheckExpert(key); !s.ok()) return s;
  }
  auto view = FindCache(cache);
  if (!view.ok()) return view.status();
  absl::MutexLock lock(&(*view)->mu());
  (*view)->Touch(absl::Now());
  // An expert the view holds keeps its variant; others are taken to be in
  // the variant the server would have asked for.
  std::vector<std::pair<ExpertKey, uint8_t>> held;
  held.reserve(resident.size());
  for (const ExpertKey& key : resident) {
    held.emplace_back(key,
                      (*view)->IsResident(key) ? (*view)->ResidentVariant(key) : VariantFor(key));
  }
  if (absl::Status s = (*view)->Adopt(held); !s.ok()) return s;
  return DescribeCache(**view);
}

absl::StatusOr<WorkerCacheStats> ModelEngine::CacheStats(const std::string& cache) const {
  auto view = FindCache(cache);
  if (!view.ok()) return view.status();
  WorkerCacheView& v = **view;
  absl::MutexLock lock(&v.mu());
  WorkerCacheStats stats{.cache = v.name(),
                         .policy = v.policy_name(),
                         .budget_bytes = v.budget_bytes(),
                         .resident_bytes = v.resident_bytes(),
                         .counters = v.counters(),
                         .resident_by_layer = std::vector<uint32_t>(config_.num_layers, 0),
                         .memory_bytes = v.MemoryBytes()};
  for (const ExpertKey& key : v.ResidentKeys()) ++stats.resident_by_layer[key.layer];
  return stats;
}

absl::Status ModelEngine::CheckExpert(ExpertKey key) const {
  if (absl::Status s = CheckLayer(key.layer); !s.ok()) return s;
  if (key.expert >= config_.router.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrFormat("expert %d is out of range: model '%s' has %d experts per layer",
                        key.expert, config_.name, config_.router.num_experts));
  }
  return absl::OkStatus();
}

void ModelEngine::FetchAsync(ExpertKey key, absl::Time deadline, FetchCallback done) {
  if (absl::Status s = CheckExpert(key); !s.ok()) return done(s);
  FetchAttempt(key, deadline, std::move(done), 0);
}

void ModelEngine::FetchAttempt(ExpertKey key, absl::Time deadline, FetchCallback done,
                               int attempt) {
  absl::StatusOr<PinnedExpert> pinned = cache_->Get(key);
  if (pinned.ok()) return done(std::move(pinned));
  // Evicted again between its page-in and this pin: under a thrashing
  // budget that can repeat, so retry as long as the caller waits.
  if (attempt > 0 && absl::Now() >= deadline) {
    return done(absl::DeadlineExceededError(absl::StrFormat(
        "expert %s was evicted again right after each of %d page-ins before the deadline: the "
        "budget is too small for the load",
        key.ToString(), attempt)));
  }
  pool_->PageIn(key, Priority::kUrgent)
      ->OnDone([this, key, deadline, done = std::move(done), attempt](const absl::Status& s) {
        if (!s.ok()) return done(s);
        FetchAttempt(key, deadline, std::move(done), attempt + 1);
      });
}

absl::StatusOr<PinnedExpert> ModelEngine::Fetch(ExpertKey key, absl::Time deadline) {
  // A budget momentarily full of pinned or loading experts passes on its
  // own: each retry waits for the cache to free room, until the deadline.
  absl::Status last = absl::OkStatus();
  while (true) {
    const uint64_t room = cache_->RoomGeneration();
    struct Result {
      absl::Notification ready;
      absl::StatusOr<PinnedExpert> value;
    };
    auto result = std::make_shared<Result>();
    FetchAsync(key, deadline, [result](absl::StatusOr<PinnedExpert> r) {
      result->value = std::move(r);
      result->ready.Notify();
    });
    if (!result->ready.WaitForNotificationWithDeadline(deadline)) break;
    if (result->value.ok() || !absl::IsResourceExhausted(result->value.status())) {
      return std::move(result->value);
    }
    last = result->value.status();
    if (!cache_->AwaitRoom(room, deadline)) break;
  }
  return absl::DeadlineExceededError(
      absl::StrFormat("expert %s was not paged in before the deadline%s", key.ToString(),
                      last.ok() ? "" : absl::StrCat(" (last attempt: ", last.message(), ")")));
}

ModelStats ModelEngine::Stats() const {
  ModelStats stats;
  stats.name = config_.name;
  stats.store = store_->Describe();
  stats.metrics = metrics_->Snapshot();
  stats.cache = cache_->Stats();
  stats.layers.resize(config_.num_layers);
  for (uint32_t l = 0; l < config_.num_layers; ++l) {
    const Layer& layer = *layers_[l];
    absl::MutexLock lock(&layer.mu);
    LayerStats& s = stats.layers[l];
    if (layer.from_previous != nullptr) {
      s.coactivation_top1 = layer.from_previous->Top1Accuracy();
      s.coactivation_top2 = layer.from_previous->Top2Accuracy();
    }
    s.mean_logit_range = layer.router->mean_logit_range();
  }
  for (const ExpertKey& key : cache_->ResidentKeys()) {
    ++stats.layers[key.layer].resident_experts;
    ++stats.resident_by_precision[cache_->ResidentPrecision(key)];
    ++stats.resident_by_class[static_cast<int>(ClassOf(key))];
  }
  for (int p = 0; p < kNumPriorities; ++p) {
    stats.queue_depth[p] = pool_->QueueDepth(static_cast<Priority>(p));
  }
  for (const auto& view : worker_caches_->All()) {
    ++stats.open_caches;
    stats.worker_cache_memory_bytes += view->MemoryBytes();
  }
  return stats;
}

}  // namespace moe_router
