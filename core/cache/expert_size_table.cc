#include "core/cache/expert_size_table.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe_router {

absl::StatusOr<std::shared_ptr<const ExpertSizeTable>> ExpertSizeTable::Build(
    const ExpertStore& store, uint32_t num_layers, uint32_t num_experts) {
  std::vector<std::string> variants = store.Precisions();
  if (variants.empty() || variants.size() > 254) {
    return absl::InvalidArgumentError(
        absl::StrFormat("store %s has %d precision variants; 1 to 254 are supported",
                        store.Describe(), variants.size()));
  }
  const size_t slots = size_t{num_layers} * num_experts;
  std::vector<uint64_t> bytes(slots * variants.size(), 0);
  for (size_t v = 0; v < variants.size(); ++v) {
    for (uint32_t l = 0; l < num_layers; ++l) {
      for (uint32_t e = 0; e < num_experts; ++e) {
        absl::StatusOr<ExpertInfo> info = store.Info({l, e}, variants[v]);
        if (info.ok()) bytes[v * slots + size_t{l} * num_experts + e] = info->bytes;
      }
    }
  }
  auto built = FromSizes(std::move(variants), num_layers, num_experts, std::move(bytes));
  if (absl::IsNotFound(built.status())) {
    return absl::NotFoundError(absl::StrCat("store ", store.Describe(), " holds no expert"));
  }
  return built;
}

absl::StatusOr<std::shared_ptr<const ExpertSizeTable>> ExpertSizeTable::FromSizes(
    std::vector<std::string> variants, uint32_t num_layers, uint32_t num_experts,
    std::vector<uint64_t> bytes) {
  auto table = std::shared_ptr<ExpertSizeTable>(new ExpertSizeTable());
  if (variants.empty() || variants.size() > 254) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d precision variants; 1 to 254 are supported", variants.size()));
  }
  table->num_experts_ = num_experts;
  table->slots_ = size_t{num_layers} * num_experts;
  if (bytes.size() != table->slots_ * variants.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d expert sizes for %d variants of %d layers x %d experts", bytes.size(),
                        variants.size(), num_layers, num_experts));
  }
  table->variants_ = std::move(variants);
  table->bytes_ = std::move(bytes);
  table->smallest_ = std::numeric_limits<uint64_t>::max();
  for (uint64_t b : table->bytes_) {
    if (b == 0) continue;  // the variant lacks that expert
    table->smallest_ = std::min(table->smallest_, b);
    table->largest_ = std::max(table->largest_, b);
  }
  if (table->smallest_ == std::numeric_limits<uint64_t>::max()) {
    return absl::NotFoundError("no expert has a size");
  }
  return std::shared_ptr<const ExpertSizeTable>(std::move(table));
}

uint8_t ExpertSizeTable::VariantIndex(const std::string& precision) const {
  const auto it = std::find(variants_.begin(), variants_.end(), precision);
  return it == variants_.end() ? 0 : static_cast<uint8_t>(it - variants_.begin());
}

}  // namespace moe_router
