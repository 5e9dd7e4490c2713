#include "eval/replay.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "core/cache/expert_cache.h"
#include "core/cache/peer_policies.h"
#include "core/routing/affinity.h"
#include "eval/belady_policy.h"
#include "eval/replay_schedule.h"

namespace moe_router {

std::vector<std::string> ReplayPolicyNames() {
  std::vector<std::string> names = EvictionPolicyNames();
  names.push_back(kBeladyPolicyName);
  return names;
}

std::vector<std::string> ReferencePolicyNames() { return {kBeladyPolicyName, "lfu", "lru"}; }

absl::Status CheckReplayPolicyName(absl::string_view name) {
  if (name == kBeladyPolicyName) return absl::OkStatus();
  return CheckEvictionPolicyName(name);
}

absl::Status ReplayOptions::Validate() const {
  if (amount == 0) return absl::InvalidArgumentError("replay budget must be > 0");
  if (expert_bytes == 0) return absl::InvalidArgumentError("replay expert size must be > 0");
  if (policies.empty()) return absl::InvalidArgumentError("replay needs at least one policy");
  if (threads == 0) return absl::InvalidArgumentError("replay threads must be > 0");
  if (hardware) {
    if (absl::Status s = hardware->Validate(); !s.ok()) return s;
  }
  for (const std::string& policy : policies) {
    if (absl::Status s = CheckReplayPolicyName(policy); !s.ok()) return s;
  }
  if (router) return router->Validate();
  return absl::OkStatus();
}

namespace {

constexpr absl::string_view kVllmPolicyName = "vllm_lfru";

struct RunTotals {
  uint64_t hits = 0, loads = 0, prefetch_loads = 0, prefetch_used = 0;
  double elapsed_us = 0;  // with a hardware profile
  uint64_t changed = 0, routed = 0;
  double gate_sum = 0, gate_min = 1;
};

// Replays one run of a trace with one policy.
class RunReplayer {
 public:
  // `run`: the run the schedule is, for its logits; null for a batch.
  RunReplayer(const RoutingTrace& trace, const ReplaySchedule& schedule,
              const RoutingTrace::Run* run, const ReplayOptions& options, const std::string& policy,
              uint32_t prefetch_budget)
      : trace_(trace),
        schedule_(schedule),
        run_(run),
        options_(options),
        policy_(policy),
        prefetch_budget_(prefetch_budget) {}

  absl::StatusOr<RunTotals> Run(const std::function<void()>& step_done) {
    if (absl::Status s = Setup(); !s.ok()) return s;
    std::vector<uint32_t> prev, experts;
    const std::vector<ReplayStep>& steps = schedule_.steps();
    for (size_t i = 0; i < steps.size(); ++i) {
      const ReplayStep& step = steps[i];
      ExpertCache& cache = CacheOf(step.layer);
      cache.BeginStep(step.layer, static_cast<uint32_t>(step.tokens()));
      if (absl::Status s = ChooseExperts(step, cache, experts); !s.ok()) return s;
      // llama.cpp serves a micro-batch above its limit around its cache:
      // every use a miss, nothing paged, nothing learned.
      if (bypass_tokens_ == 0 || step.tokens() <= bypass_tokens_) {
        CountHits(cache, step.layer, experts);
        if (absl::Status s = Serve(cache, step.layer, step.tokens(), experts); !s.ok()) return s;
        Learn(steps, i, prev, experts);
        prev = experts;
      }
      step_done();
    }
    for (const auto& cache : caches_) totals_.prefetch_used += cache->Stats().prefetch_used;
    if (timer_) totals_.elapsed_us = timer_->elapsed_us();
    return totals_;
  }

 private:
  // The step's uses: the trace's, or the router's choice against the cache.
  absl::Status ChooseExperts(const ReplayStep& step, ExpertCache& cache,
                             std::vector<uint32_t>& experts) {
    if (routers_.empty()) {
      experts.assign(step.experts.begin(), step.experts.end());
      return absl::OkStatus();
    }
    absl::Span<const float> logits;
    if (run_ != nullptr) {
      logits = trace_.StepLogits(*run_, step.run_step);
    } else {  // a batch: each token's logits from its run
      const size_t n = trace_.num_experts;
      logits_.resize(step.tokens() * n);
      for (size_t t = 0; t < step.tokens(); ++t) {
        const auto row = trace_.StepLogits(trace_.runs[step.runs[t]], step.run_steps[t]);
        std::copy(row.begin(), row.end(), logits_.begin() + t * n);
      }
      logits = logits_;
    }
    if (absl::Status s =
            routers_[step.layer]->Route(logits, cache.ResidentFlags(step.layer), &batch_);
        !s.ok()) {
      return s;
    }
    experts = batch_.experts;
    totals_.changed += batch_.changed_tokens;
    totals_.routed += batch_.tokens;
    totals_.gate_sum += batch_.gate_mass_sum;
    totals_.gate_min = std::min(totals_.gate_min, batch_.gate_mass_min);
    return absl::OkStatus();
  }

  // Each missing expert's first use is its miss; every other use hits (it
  // is in by the time the step computes), as worker views count.
  void CountHits(const ExpertCache& cache, uint32_t l, const std::vector<uint32_t>& experts) {
    missed_.clear();
    for (uint32_t e : experts) {
      if (!cache.IsResident({l, e}) &&
          std::find(missed_.begin(), missed_.end(), e) == missed_.end()) {
        missed_.push_back(e);
      }
    }
    totals_.hits += experts.size() - missed_.size();
  }

  // Pages the step in: its experts arranged as the policy (or vLLM) touches
  // them and pinned while it is served; every use recorded before the
  // misses load, each once, as an engine routes a layer and then pages it
  // (vLLM: each miss loads before the next use).
  absl::Status Serve(ExpertCache& cache, uint32_t l, size_t tokens,
                     std::vector<uint32_t>& experts) {
    if (interleaved_) {
      std::sort(experts.begin(), experts.end());
      experts.erase(std::unique(experts.begin(), experts.end()), experts.end());
    } else {
      ArrangeStep(cache.step_order(), experts, [&cache, l](uint32_t e) {
        return cache.IsResident({l, e});
      });
    }
    for (uint32_t e : experts) cache.Pin({l, e});
    missed_.clear();
    if (timer_) timer_->BeginStep();
    // vLLM's split: from then on only the expert it came at stays pinned.
    std::optional<uint32_t> split_at;
    for (uint32_t e : experts) {
      if (cache.Access({l, e})) {
        if (timer_) timer_->Use(Slot(l, e));
      } else if (interleaved_) {
        absl::Status s = DemandLoad(cache, l, e);
        if (absl::IsResourceExhausted(s) && !split_at) {
          // vLLM splits a batch whose experts do not fit its layer's
          // slots: what was served computes and lets go, and the rest load
          // (again, if evicted meanwhile) as they come.
          split_at = e;
          for (uint32_t other : experts) {
            if (other != e) cache.Unpin({l, other});
          }
          s = DemandLoad(cache, l, e);
        }
        if (!s.ok()) return s;
      } else if (std::find(missed_.begin(), missed_.end(), e) == missed_.end()) {
        missed_.push_back(e);
      }
    }
    for (uint32_t e : missed_) {
      if (absl::Status s = DemandLoad(cache, l, e); !s.ok()) return s;
    }
    if (timer_) timer_->EndStep(tokens);
    if (split_at) {
      cache.Unpin({l, *split_at});
    } else {
      for (uint32_t e : experts) cache.Unpin({l, e});
    }
    return absl::OkStatus();
  }

  // What the step teaches affinity and co-activation (from the same tokens
  // one layer down), and the prefetch it issues for the next step.
  void Learn(const std::vector<ReplayStep>& steps, size_t i, const std::vector<uint32_t>& prev,
             const std::vector<uint32_t>& experts) {
    const ReplayStep& step = steps[i];
    affinity_[step.layer]->Update(experts);
    if (i > 0 && steps[i - 1].token == step.token && steps[i - 1].layer + 1 == step.layer) {
      coactivation_[step.layer]->Update(prev, experts);
    }
    if (prefetch_budget_ > 0 && i + 1 < steps.size()) {
      Prefetch(steps[i + 1].layer, experts, /*same_token=*/steps[i + 1].token == step.token);
    }
  }

  absl::Status Setup() {
    const uint32_t layers = trace_.num_layers, n = trace_.num_experts;
    uint64_t budget = options_.amount;
    if (options_.mode != BudgetMode::kGlobalBytes) budget *= options_.expert_bytes;
    interleaved_ = options_.peer_shapes && policy_ == kVllmPolicyName;
    if (interleaved_ && options_.mode != BudgetMode::kPerLayer) {
      const uint64_t per_layer = budget / options_.expert_bytes / layers;
      if (per_layer < trace_.top_k) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "vllm_lfru sizes its cache per layer: a budget of %d experts over %d layers leaves "
            "%d per layer, fewer than top_k %d (vLLM refuses to start)",
            budget / options_.expert_bytes, layers, per_layer, trace_.top_k));
      }
      per_layer_ = true;
      budget = per_layer * options_.expert_bytes;
    }
    if (const uint64_t padding = PeerPaddingSlots(policy_) * options_.expert_bytes; padding > 0) {
      if (budget < padding + uint64_t{trace_.top_k} * options_.expert_bytes) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "%s keeps a padding slot: a budget of %d experts leaves fewer than the %d of one step",
            policy_, budget / options_.expert_bytes, trace_.top_k));
      }
      budget -= padding;
    }
    if (options_.peer_shapes) bypass_tokens_ = PeerBypassTokens(policy_);
    per_layer_ = per_layer_ || options_.mode == BudgetMode::kPerLayer;
    const uint32_t caches = per_layer_ ? layers : 1;
    // The peers route as their engines do: plain top-k, the trace's; belady
    // pages that routing, since it needs the accesses in advance.
    const bool reroute = options_.router && !IsPeerPolicy(policy_) && policy_ != kBeladyPolicyName;
    for (uint32_t l = 0; l < layers; ++l) {
      affinity_.push_back(std::make_unique<ExpertAffinity>(n, AffinityConfig{}));
      coactivation_.push_back(
          std::make_unique<CoActivation>(n, n, AffinityConfig{}.coactivation_decay));
      if (reroute) {
        // The model's rule is the trace's.
        RouterConfig config = *options_.router;
        config.rule = trace_.rule;
        auto router = LayerRouter::Create(config, AffinityConfig{}, trace_.LayerChoiceBias(l));
        if (!router.ok()) return router.status();
        routers_.push_back(std::make_unique<LayerRouter>(*std::move(router)));
      }
    }
    if (policy_ == kBeladyPolicyName) BuildFutureAccesses(caches);
    if (options_.hardware) {
      timer_.emplace(*options_.hardware, options_.expert_bytes, size_t{layers} * n);
    }
    for (uint32_t c = 0; c < caches; ++c) {
      auto policy = MakePolicy(c);
      if (!policy.ok()) return policy.status();
      auto cache = ExpertCache::Create(
          CacheConfig{.num_layers = layers, .num_experts = n, .budget_bytes = budget},
          *std::move(policy));
      if (!cache.ok()) return cache.status();
      caches_.push_back(*std::move(cache));
    }
    return absl::OkStatus();
  }

  // The replayed policy for cache `c`: belady reads the future of that
  // cache's accesses; the online policies come from the engine's factory.
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakePolicy(uint32_t c) {
    if (policy_ == kBeladyPolicyName) {
      return MakeBeladyPolicy([this, c](ExpertKey k, uint64_t now) {
        const std::vector<uint64_t>& uses =
            future_[c][size_t{k.layer} * trace_.num_experts + k.expert];
        const auto it = std::upper_bound(uses.begin(), uses.end(), now);
        return it == uses.end() ? std::numeric_limits<uint64_t>::max() : *it;
      });
    }
    EvictionPolicyOptions options;
    options.affinity = [this](ExpertKey k) { return affinity_[k.layer]->Score(k.expert); };
    options.affinity_version = [this](uint32_t layer) { return affinity_[layer]->version(); };
    return MakeEvictionPolicy(policy_, options);
  }

  // The cache ticks at which each expert will be accessed: the cache counts
  // one tick per Access, so tick i is the i-th access that cache serves.
  void BuildFutureAccesses(uint32_t caches) {
    future_.assign(
        caches, std::vector<std::vector<uint64_t>>(size_t{trace_.num_layers} * trace_.num_experts));
    std::vector<uint64_t> tick(caches, 0);
    for (const ReplayStep& step : schedule_.steps()) {
      const uint32_t c = caches == 1 ? 0 : step.layer;
      for (uint32_t e : step.experts) {
        future_[c][size_t{step.layer} * trace_.num_experts + e].push_back(++tick[c]);
      }
    }
  }

  ExpertCache& CacheOf(uint32_t layer) { return *caches_[per_layer_ ? layer : 0]; }

  size_t Slot(uint32_t layer, uint32_t expert) const {
    return size_t{layer} * trace_.num_experts + expert;
  }

  absl::Status DemandLoad(ExpertCache& cache, uint32_t layer, uint32_t expert) {
    if (absl::Status s = Load(cache, {layer, expert}, Priority::kUrgent); !s.ok()) return s;
    ++totals_.loads;
    if (timer_) timer_->Demand(Slot(layer, expert));
    return absl::OkStatus();
  }

  absl::Status Load(ExpertCache& cache, ExpertKey key, Priority priority) {
    if (absl::Status s = cache.Reserve(key, options_.expert_bytes, priority); !s.ok()) return s;
    auto data = std::make_shared<ExpertData>();
    data->key = key;
    data->size = options_.expert_bytes;
    return cache.Commit(std::move(data));
  }

  // After a step, prefetch for the next one (at layer `next`): experts
  // co-activated with this step's when it is the same token's next layer,
  // then the next layer's most affine.
  void Prefetch(uint32_t next, const std::vector<uint32_t>& experts, bool same_token) {
    std::vector<uint32_t> candidates;
    if (same_token && next > 0)
      candidates = coactivation_[next]->Predict(experts, prefetch_budget_);
    for (uint32_t e : affinity_[next]->TopByAffinity(prefetch_budget_)) {
      if (candidates.size() >= prefetch_budget_) break;
      if (std::find(candidates.begin(), candidates.end(), e) == candidates.end()) {
        candidates.push_back(e);
      }
    }
    ExpertCache& cache = CacheOf(next);
    for (uint32_t e : candidates) {
      const ExpertKey key{next, e};
      if (cache.IsResident(key)) continue;
      if (Load(cache, key, Priority::kPrefetch).ok()) {
        ++totals_.prefetch_loads;
        if (timer_) timer_->Prefetch(Slot(next, e));
      }
    }
  }

  const RoutingTrace& trace_;
  const ReplaySchedule& schedule_;
  const RoutingTrace::Run* run_;
  const ReplayOptions& options_;
  const std::string policy_;
  const uint32_t prefetch_budget_;
  bool per_layer_ = false;          // a cache per layer
  bool interleaved_ = false;        // vLLM's shape (ReplayOptions::peer_shapes)
  uint32_t bypass_tokens_ = 0;      // steps of more tokens skip the cache (0: none)
  std::optional<StepTimer> timer_;  // with a hardware profile
  std::vector<uint32_t> missed_;    // a step's missing experts (scratch)
  RouteResult batch_;               // a rerouted step (scratch)
  std::vector<float> logits_;       // a rerouted batch's logits (scratch)
  std::vector<std::unique_ptr<ExpertAffinity>> affinity_;
  std::vector<std::unique_ptr<CoActivation>> coactivation_;  // [l]: from l - 1 into l
  std::vector<std::unique_ptr<LayerRouter>> routers_;
  std::vector<std::unique_ptr<ExpertCache>> caches_;
  std::vector<std::vector<std::vector<uint64_t>>> future_;  // [cache][key] -> ticks
  RunTotals totals_;
};

// Whether `policy` is replayed a second time with prefetch: the peers'
// engines do not prefetch, so their ready figures are their demand ones.
bool PrefetchPass(const ReplayOptions& options, const std::string& policy) {
  return options.prefetch_budget > 0 && !IsPeerPolicy(policy);
}

// One policy's row: each run from a cold cache, demand paging and, with a
// prefetch budget, again with prefetch.
// `batched`: the batch's schedule, or null to replay each run cold.
absl::StatusOr<ReplayRow> ReplayPolicy(const RoutingTrace& trace, const ReplayOptions& options,
                                       const ReplaySchedule* batched, const std::string& policy,
                                       const std::function<void()>& step_done) {
  const bool with_prefetch = PrefetchPass(options, policy);
  ReplayRow row;
  row.policy = policy;
  row.accesses = trace.Accesses();
  row.tokens = trace.Tokens();
  for (int pass = 0; pass < (with_prefetch ? 2 : 1); ++pass) {
    const uint32_t budget = pass == 1 ? options.prefetch_budget : 0;
    RunTotals sum;
    for (uint32_t r = 0; r < (batched ? 1 : trace.runs.size()); ++r) {
      const ReplaySchedule own = batched ? ReplaySchedule() : ReplaySchedule::OfRun(trace, r);
      RunReplayer replayer(trace, batched ? *batched : own, batched ? nullptr : &trace.runs[r],
                           options, policy, budget);
      absl::StatusOr<RunTotals> totals = replayer.Run(step_done);
      // A peer's engine refusing the budget is a row, not a failed replay.
      if (absl::IsFailedPrecondition(totals.status())) {
        row.refused = std::string(totals.status().message());
        const uint64_t steps = batched ? batched->steps().size() : trace.Steps();
        for (uint64_t i = 0; i < steps; ++i) step_done();  // its share of the progress
        return row;
      }
      if (!totals.ok()) return totals.status();
      sum.hits += totals->hits;
      sum.loads += totals->loads;
      sum.prefetch_loads += totals->prefetch_loads;
      sum.prefetch_used += totals->prefetch_used;
      sum.elapsed_us += totals->elapsed_us;
      sum.changed += totals->changed;
      sum.routed += totals->routed;
      sum.gate_sum += totals->gate_sum;
      sum.gate_min = std::min(sum.gate_min, totals->gate_min);
    }
    const double accesses = static_cast<double>(row.accesses);
    const double tokens = static_cast<double>(row.tokens);
    if (pass == 0) {
      row.demand_hits = sum.hits;
      row.demand_loads = sum.loads;
      row.hit_rate = sum.hits / accesses;
      row.demand_loads_per_token = sum.loads / tokens;
      row.ms_per_token = sum.elapsed_us / 1e3 / tokens;
      if (sum.routed > 0) {
        row.changed_fraction = static_cast<double>(sum.changed) / sum.routed;
        row.gate_mass_mean = sum.gate_sum / sum.routed;
        row.gate_mass_min = sum.gate_min;
      }
    }
    if (pass == 1 || !with_prefetch) {
      row.ready_hits = sum.hits;
      row.prefetch_loads = sum.prefetch_loads;
      row.prefetch_used = sum.prefetch_used;
      row.ready_rate = sum.hits / accesses;
      row.loads_per_token = (sum.loads + sum.prefetch_loads) / tokens;
      row.ready_ms_per_token = sum.elapsed_us / 1e3 / tokens;
    }
  }
  return row;
}

}  // namespace

absl::StatusOr<ReplayReport> Replay(const RoutingTrace& trace, const ReplayOptions& options,
                                    const std::function<void(uint64_t, uint64_t)>& progress) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (options.router && !trace.has_logits()) {
    return absl::InvalidArgumentError(
        "rerouting needs a logits trace (from 'moe-router tracegen'); this trace has only "
        "the chosen experts");
  }
  if (options.router &&
      (options.router->num_experts != trace.num_experts || options.router->top_k != trace.top_k)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router shape %d experts top-%d does not match the trace's %d experts top-%d",
        options.router->num_experts, options.router->top_k, trace.num_experts, trace.top_k));
  }
  const uint64_t per_cache_slots = options.mode == BudgetMode::kGlobalBytes
                                       ? options.amount / options.expert_bytes
                                       : options.amount;
  if (per_cache_slots < trace.top_k) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a budget of %d experts cannot hold the %d experts of one step",
                        per_cache_slots, trace.top_k));
  }
  ReplayReport report;
  report.tokens = trace.Tokens();
  report.accesses = trace.Accesses();
  std::optional<ReplaySchedule> batched;
  if (options.batch > 0) batched = ReplaySchedule::Batched(trace, options.batch);
  const uint64_t steps = batched ? batched->steps().size() : trace.Steps();
  uint64_t total = 0;
  for (const std::string& policy : options.policies) {
    total += steps * (PrefetchPass(options, policy) ? 2 : 1);
  }
  std::atomic<uint64_t> done{0};
  absl::Mutex progress_mu;
  const auto step_done = [&] {
    const uint64_t d = done.fetch_add(1, std::memory_order_relaxed) + 1;
    if (progress && (d % 4096 == 0 || d == total)) {
      absl::MutexLock lock(&progress_mu);
      progress(d, total);
    }
  };
  std::vector<absl::StatusOr<ReplayRow>> rows(options.policies.size(),
                                              absl::UnknownError("not replayed"));
  std::atomic<size_t> next{0};
  const auto work = [&] {
    while (true) {
      const size_t i = next.fetch_add(1);
      if (i >= options.policies.size()) return;
      rows[i] = ReplayPolicy(trace, options, batched ? &*batched : nullptr, options.policies[i],
                             step_done);
    }
  };
  std::vector<std::thread> threads;
  const size_t extra = std::min<size_t>(options.threads, options.policies.size()) - 1;
  for (size_t t = 0; t < extra; ++t) threads.emplace_back(work);
  work();
  for (std::thread& t : threads) t.join();
  for (absl::StatusOr<ReplayRow>& row : rows) {
    if (!row.ok()) return row.status();
    report.rows.push_back(*std::move(row));
  }
  return report;
}

}  // namespace moe_router
