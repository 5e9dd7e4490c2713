#include "core/cache/worker_cache_set.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/resource_name.h"

namespace moe_router {

WorkerCacheInfo DescribeCache(WorkerCacheView& view) {
  WorkerCacheInfo info;
  info.cache = view.name();
  info.budget_bytes = view.budget_bytes();
  info.resident = view.ResidentKeys();
  info.policy = view.policy_name();
  return info;
}

WorkerCacheSet::WorkerCacheSet(std::string model, uint32_t num_layers, uint32_t num_experts,
                               std::shared_ptr<const ExpertSizeTable> sizes,
                               WorkerCacheLimits limits, std::string default_policy,
                               EvictionPolicyOptions policy_options)
    : model_(std::move(model)),
      num_layers_(num_layers),
      num_experts_(num_experts),
      sizes_(std::move(sizes)),
      limits_(limits),
      default_policy_(std::move(default_policy)),
      policy_options_(std::move(policy_options)) {}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> WorkerCacheSet::MakePolicy(
    const std::string& name) const {
  const std::string& chosen = name.empty() ? default_policy_ : name;
  if (absl::Status s = CheckEvictionPolicyName(chosen); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cache eviction_policy: ", s.message()));
  }
  return MakeEvictionPolicy(chosen, policy_options_);
}

absl::StatusOr<WorkerCacheInfo> WorkerCacheSet::Open(const std::string& name, uint64_t budget_bytes,
                                                     const std::string& policy, absl::Time now) {
  if (absl::Status s = CheckResourceName("cache", name); !s.ok()) return s;
  if (budget_bytes < sizes_->smallest()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cache budget_bytes (%d) is smaller than one expert of model '%s' (%d bytes)", budget_bytes,
        model_, sizes_->smallest()));
  }
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> made = MakePolicy(policy);
  if (!made.ok()) return made.status();
  std::shared_ptr<WorkerCacheView> view;
  bool created = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = caches_.find(name);
    if (it != caches_.end()) {
      view = it->second;
    } else {
      if (caches_.size() >= limits_.max_caches) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "model '%s' has %d open caches, the limit (--max_caches_per_model); close one or "
            "let idle ones expire",
            model_, caches_.size()));
      }
      view = std::make_shared<WorkerCacheView>(name, num_layers_, num_experts_, budget_bytes,
                                               *std::move(made), sizes_);
      caches_.emplace(name, view);
      created = true;
    }
  }
  absl::MutexLock lock(&view->mu());
  view->Touch(now);
  std::vector<ExpertKey> evictions;
  if (!created) {
    if (!policy.empty() && policy != view->policy_name()) view->SetPolicy(*std::move(made));
    if (budget_bytes != view->budget_bytes()) {
      view->Resize(budget_bytes);
      evictions = view->EndCall().evictions;
    }
  }
  WorkerCacheInfo info = DescribeCache(*view);
  info.created = created;
  info.evictions = std::move(evictions);
  return info;
}

absl::Status WorkerCacheSet::Close(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (caches_.erase(name) == 0) {
    return absl::NotFoundError(
        absl::StrFormat("model '%s' has no open cache '%s'", model_, name.substr(0, 128)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<WorkerCacheView>> WorkerCacheSet::Find(
    const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  const auto it = caches_.find(name);
  if (it == caches_.end()) {
    return absl::NotFoundError(absl::StrFormat(
        "model '%s' has no open cache '%s': open it with OpenCache first (caches idle for %s "
        "are closed)",
        model_, name.substr(0, 128), absl::FormatDuration(limits_.idle_timeout)));
  }
  return it->second;
}

size_t WorkerCacheSet::CloseIdle(absl::Time now) {
  absl::MutexLock lock(&mu_);
  return absl::erase_if(caches_, [&](const auto& entry) {
    return now - entry.second->last_used() > limits_.idle_timeout;
  });
}

size_t WorkerCacheSet::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return caches_.size();
}

std::vector<std::shared_ptr<WorkerCacheView>> WorkerCacheSet::All() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::shared_ptr<WorkerCacheView>> all;
  all.reserve(caches_.size());
  for (const auto& [name, view] : caches_) all.push_back(view);
  return all;
}

}  // namespace moe_router
