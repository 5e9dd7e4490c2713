#include "server/model_registry.h"

#include <google/protobuf/util/message_differencer.h>

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/base/file_io.h"
#include "proto/proto_to_core.h"

namespace moe_router {

absl::StatusOr<bool> ModelRegistry::Register(const v1::ModelSpec& spec,
                                             const std::function<absl::Status()>& interrupted) {
  // The name is checked by ConfigFromSpec: an invalid one matches no model.
  {
    absl::ReaderMutexLock lock(&mu_);
    const auto it = models_.find(spec.name());
    if (it != models_.end()) {
      if (google::protobuf::util::MessageDifferencer::Equals(it->second->spec, spec)) return false;
      return absl::AlreadyExistsError(absl::StrFormat(
          "model '%s' is registered with a different spec; unregister it first", spec.name()));
    }
  }
  // A rule whose biases live in the checkpoint reads them first (headers and
  // those tensors only).
  auto worker_spec = WithCheckpointBias(spec);
  if (!worker_spec.ok()) return worker_spec.status();
  auto config = ConfigFromSpec(*worker_spec);
  if (!config.ok()) return config.status();
  config->paging.threads = options_.paging_threads;
  config->worker_caches = options_.worker_caches;
  const ModelFootprint footprint =
      EstimateFootprint(*config, spec.has_synthetic() ? spec.synthetic().expert_bytes() : 0);
  if (absl::Status s = Reserve(spec.name(), footprint); !s.ok()) return s;
  // Build outside the lock: opening a safetensors store reads files.
  absl::StatusOr<std::shared_ptr<HostedModel>> hosted =
      Build(spec, *worker_spec, *config, interrupted);
  absl::MutexLock lock(&mu_);
  --registrations_under_way_;
  if (!hosted.ok()) {
    committed_bytes_ -= footprint.Total();
    return hosted.status();
  }
  (*hosted)->footprint = footprint;
  const auto [it, inserted] = models_.emplace(spec.name(), *std::move(hosted));
  if (!inserted) {
    // Lost a race with another registration of the same name.
    committed_bytes_ -= footprint.Total();
    if (google::protobuf::util::MessageDifferencer::Equals(it->second->spec, spec)) return false;
    return absl::AlreadyExistsError(
        absl::StrFormat("model '%s' is registered with a different spec", spec.name()));
  }
  return true;
}

absl::Status ModelRegistry::Reserve(const std::string& name, const ModelFootprint& footprint) {
  absl::MutexLock lock(&mu_);
  const size_t models = models_.size() + registrations_under_way_;
  if (models >= options_.max_models) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cannot register model '%s': the server hosts %d models, its limit (--max_models)", name,
        models));
  }
  const uint64_t limit = options_.memory_limit_bytes;
  if (footprint.Total() > limit || committed_bytes_ > limit - footprint.Total()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cannot register model '%s': it needs %s, and %s of the server's memory limit of %s "
        "(--memory_limit) is committed to %d other models; lower its budget_bytes, or unregister "
        "a model",
        name, footprint.ToString(), FormatBytes(committed_bytes_), FormatBytes(limit), models));
  }
  committed_bytes_ += footprint.Total();
  ++registrations_under_way_;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<HostedModel>> ModelRegistry::Build(
    const v1::ModelSpec& spec, const v1::ModelSpec& worker_spec, const ModelConfig& config,
    const std::function<absl::Status()>& interrupted) {
  const std::string manifests = options_.state_dir.empty() ? "" : options_.state_dir + "/manifests";
  auto store = StoreFromSpec(spec, manifests, interrupted);
  if (!store.ok()) return store.status();
  auto engine = ModelEngine::Create(config, *std::move(store));
  if (!engine.ok()) return engine.status();
  if (!options_.state_dir.empty()) {
    absl::StatusOr<std::string> path = StatePath(spec.name());
    if (!path.ok()) return path.status();
    if (std::filesystem::exists(*path)) {
      absl::StatusOr<std::string> text = ReadFile(*path);
      absl::Status loaded = text.ok() ? (*engine)->ImportState(*text) : text.status();
      if (!loaded.ok()) {
        std::fprintf(stderr, "moe-router: ignoring saved state %s: %s\n", path->c_str(),
                     std::string(loaded.message()).c_str());
      }
    }
  }
  // The caller may have gone while the store opened.
  if (interrupted != nullptr) {
    if (absl::Status s = interrupted(); !s.ok()) return s;
  }
  auto hosted = std::make_shared<HostedModel>();
  hosted->spec = spec;
  hosted->worker_spec = worker_spec;
  hosted->engine = std::shared_ptr<ModelEngine>(*std::move(engine));
  return hosted;
}

uint64_t ModelRegistry::committed_bytes() const {
  absl::ReaderMutexLock lock(&mu_);
  return committed_bytes_;
}

absl::StatusOr<std::string> ModelRegistry::StatePath(const std::string& model) const {
  return PathInDirectory(options_.state_dir, model + ".state.json");
}

absl::Status ModelRegistry::SaveStates() const {
  if (options_.state_dir.empty()) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(options_.state_dir, ec);
  absl::Status first = absl::OkStatus();
  for (const auto& model : List()) {
    absl::StatusOr<std::string> path = StatePath(model->spec.name());
    absl::Status s =
        path.ok() ? WriteFileAtomically(*path, model->engine->ExportState()) : path.status();
    if (first.ok()) first = s;
  }
  if (first.ok()) {
    last_snapshot_seconds_.store(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
  } else {
    snapshot_failures_.fetch_add(1);
  }
  return first;
}

absl::Status ModelRegistry::NoSuchModel(const std::string& name) const {
  if (options_.replica.empty()) {
    return absl::NotFoundError(absl::StrFormat("no model named '%s'", name));
  }
  return absl::NotFoundError(absl::StrFormat(
      "no model named '%s' on replica '%s' (each replica needs it: in the --config file every "
      "replica loads, or registered on each)",
      name, options_.replica));
}

absl::Status ModelRegistry::Unregister(const std::string& name) {
  std::shared_ptr<const HostedModel> removed;  // shut down outside the lock
  {
    absl::MutexLock lock(&mu_);
    const auto it = models_.find(name);
    if (it == models_.end()) {
      return NoSuchModel(name);
    }
    removed = std::move(it->second);
    models_.erase(it);
    committed_bytes_ -= removed->footprint.Total();
  }
  removed->engine->Shutdown();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const HostedModel>> ModelRegistry::Find(
    const std::string& name) const {
  if (name.empty()) return absl::InvalidArgumentError("model name must not be empty");
  absl::ReaderMutexLock lock(&mu_);
  const auto it = models_.find(name);
  if (it == models_.end()) return NoSuchModel(name);
  return it->second;
}

std::vector<std::shared_ptr<const HostedModel>> ModelRegistry::List() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::shared_ptr<const HostedModel>> out;
  for (const auto& [name, model] : models_) out.push_back(model);
  return out;
}

size_t ModelRegistry::CloseIdleCaches(absl::Time now) const {
  size_t closed = 0;
  for (const auto& model : List()) closed += model->engine->CloseIdleCaches(now);
  return closed;
}

}  // namespace moe_router
