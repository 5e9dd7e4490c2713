#include "tests/testing/gated_store.h"

namespace moe_router::testing {

GatedStore::GatedStore(uint64_t bytes)
    : inner_(*SyntheticStore::Create(
          {.num_layers = 4, .num_experts = 8, .variants = {{"default", bytes}}})) {}

void GatedStore::Open() {
  absl::MutexLock lock(&mu_);
  open_ = true;
}

std::vector<ExpertKey> GatedStore::loaded() const {
  absl::MutexLock lock(&mu_);
  return loaded_;
}

int GatedStore::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

std::vector<std::string> GatedStore::Precisions() const { return inner_->Precisions(); }

absl::StatusOr<ExpertInfo> GatedStore::Info(ExpertKey key, const std::string& precision) const {
  return inner_->Info(key, precision);
}

absl::StatusOr<std::shared_ptr<const ExpertData>> GatedStore::Load(
    ExpertKey key, const std::string& precision) const {
  {
    absl::MutexLock lock(&mu_);
    ++waiting_;
    mu_.Await(absl::Condition(&open_));
    --waiting_;
    loaded_.push_back(key);
  }
  return inner_->Load(key, precision);
}

}  // namespace moe_router::testing
