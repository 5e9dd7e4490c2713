#include "server/model_registry.h"

#include <google/protobuf/util/message_differencer.h>

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_format.h"
#include "core/file_io.h"
#include "server/proto_to_core.h"

namespace moe_router {

absl::StatusOr<bool> ModelRegistry::Register(const v1::ModelSpec& spec) {
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
  // Build outside the lock: opening a safetensors store reads files.
  auto config = ConfigFromSpec(spec);
  if (!config.ok()) return config.status();
  config->paging.threads = paging_threads_;
  config->worker_caches = worker_caches_;
  auto store = StoreFromSpec(spec);
  if (!store.ok()) return store.status();
  auto engine = ModelEngine::Create(*config, *std::move(store));
  if (!engine.ok()) return engine.status();
  if (!state_dir_.empty()) {
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
  auto hosted = std::make_shared<HostedModel>();
  hosted->spec = spec;
  hosted->engine = std::shared_ptr<ModelEngine>(*std::move(engine));
  absl::MutexLock lock(&mu_);
  const auto [it, inserted] = models_.emplace(spec.name(), std::move(hosted));
  if (!inserted) {
    // Lost a race with another registration of the same name.
    if (google::protobuf::util::MessageDifferencer::Equals(it->second->spec, spec)) return false;
    return absl::AlreadyExistsError(
        absl::StrFormat("model '%s' is registered with a different spec", spec.name()));
  }
  return true;
}

absl::StatusOr<std::string> ModelRegistry::StatePath(const std::string& model) const {
  return PathInDirectory(state_dir_, model + ".state.json");
}

absl::Status ModelRegistry::SaveStates() const {
  if (state_dir_.empty()) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(state_dir_, ec);
  absl::Status first = absl::OkStatus();
  for (const auto& model : List()) {
    absl::StatusOr<std::string> path = StatePath(model->spec.name());
    absl::Status s =
        path.ok() ? WriteFileAtomically(*path, model->engine->ExportState()) : path.status();
    if (first.ok()) first = s;
  }
  return first;
}

absl::Status ModelRegistry::Unregister(const std::string& name) {
  std::shared_ptr<const HostedModel> removed;  // shut down outside the lock
  {
    absl::MutexLock lock(&mu_);
    const auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(absl::StrFormat("no model named '%s'", name));
    }
    removed = std::move(it->second);
    models_.erase(it);
  }
  removed->engine->Shutdown();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const HostedModel>> ModelRegistry::Find(
    const std::string& name) const {
  if (name.empty()) return absl::InvalidArgumentError("model name must not be empty");
  absl::ReaderMutexLock lock(&mu_);
  const auto it = models_.find(name);
  if (it == models_.end()) return absl::NotFoundError(absl::StrFormat("no model named '%s'", name));
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
