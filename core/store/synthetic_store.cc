#include "core/store/synthetic_store.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/store/checksum.h"

namespace moe_router {

absl::Status SyntheticStoreOptions::Validate() const {
  if (num_layers == 0 || num_experts == 0) {
    return absl::InvalidArgumentError("synthetic store needs layers and experts > 0");
  }
  if (variants.empty()) {
    return absl::InvalidArgumentError("synthetic store needs at least one variant");
  }
  for (const auto& [name, bytes] : variants) {
    if (name.empty()) return absl::InvalidArgumentError("synthetic variant with no name");
    if (bytes < 3) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "synthetic variant '%s' expert_bytes must be >= 3 (three tensors), got %d", name, bytes));
    }
  }
  return absl::OkStatus();
}

namespace {

// Experts differ from each other in one 8-byte word per page.
constexpr uint64_t kStampStride = 4096;

}  // namespace

SyntheticStore::SyntheticStore(const SyntheticStoreOptions& options) : options_(options) {
  uint64_t largest = 0;
  for (const auto& [name, bytes] : options_.variants) largest = std::max(largest, bytes);
  pattern_.resize(largest);
  // splitmix64: cheap, and the same pattern in every process.
  uint64_t state = 0x6d6f652d726f7574ull;
  for (uint64_t i = 0; i < largest; i += 8) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(pattern_.data() + i, &z, std::min<uint64_t>(8, largest - i));
  }
}

absl::StatusOr<std::unique_ptr<SyntheticStore>> SyntheticStore::Create(
    const SyntheticStoreOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::unique_ptr<SyntheticStore>(new SyntheticStore(options));
}

std::vector<std::string> SyntheticStore::Precisions() const {
  std::vector<std::string> names;
  for (const auto& [name, bytes] : options_.variants) names.push_back(name);
  return names;
}

absl::StatusOr<uint64_t> SyntheticStore::Bytes(ExpertKey key, const std::string& precision) const {
  if (key.layer >= options_.num_layers || key.expert >= options_.num_experts) {
    return absl::NotFoundError(
        absl::StrFormat("expert %s is not in the synthetic store (%d layers x %d experts)",
                        key.ToString(), options_.num_layers, options_.num_experts));
  }
  for (const auto& [name, bytes] : options_.variants) {
    if (name == precision) return bytes;
  }
  return absl::NotFoundError(
      absl::StrFormat("synthetic store has no precision variant '%s'", precision));
}

absl::StatusOr<ExpertInfo> SyntheticStore::Info(ExpertKey key, const std::string& precision) const {
  absl::StatusOr<uint64_t> bytes = Bytes(key, precision);
  if (!bytes.ok()) return bytes.status();
  return ExpertInfo{.bytes = *bytes};
}

absl::StatusOr<std::shared_ptr<const ExpertData>> SyntheticStore::Load(
    ExpertKey key, const std::string& precision) const {
  absl::StatusOr<uint64_t> bytes = Bytes(key, precision);
  if (!bytes.ok()) return bytes.status();
  auto data = std::make_shared<ExpertData>();
  data->key = key;
  data->precision = precision;
  data->size = *bytes;
  data->bytes = AllocateExpertBytes(*bytes);
  uint8_t* out = data->bytes.get();
  std::memcpy(out, pattern_.data(), *bytes);
  // absl::HashOf is salted per process; the stamp must not be.
  uint64_t stamp = (uint64_t{key.layer} << 32 | key.expert) * 0x9e3779b97f4a7c15ull;
  for (char c : precision) stamp = (stamp ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  for (uint64_t i = 0; i + 8 <= *bytes; i += kStampStride) {
    uint64_t word;
    std::memcpy(&word, out + i, 8);
    word ^= stamp;
    std::memcpy(out + i, &word, 8);
  }
  // Three tensors like a gated MLP expert (w1, w2, w3).
  const uint64_t third = *bytes / 3;
  const uint64_t sizes[3] = {third, third, *bytes - 2 * third};
  const char* names[3] = {"w1", "w2", "w3"};
  std::vector<std::pair<std::string, uint64_t>> digests;
  uint64_t offset = 0;
  for (int t = 0; t < 3; ++t) {
    TensorData tensor{.name = names[t],
                      .dtype = "U8",
                      .shape = {static_cast<int64_t>(sizes[t])},
                      .offset = offset,
                      .size = sizes[t]};
    tensor.checksum = Xxh3({out + offset, sizes[t]});
    digests.emplace_back(tensor.name, tensor.checksum);
    data->tensors.push_back(std::move(tensor));
    offset += sizes[t];
  }
  data->checksum = ExpertChecksum(digests);
  return data;
}

std::string SyntheticStore::Describe() const {
  return absl::StrFormat(
      "synthetic store: %d layers x %d experts, %d variant(s), %d bytes "
      "per expert in '%s'",
      options_.num_layers, options_.num_experts, options_.variants.size(),
      options_.variants[0].second, options_.variants[0].first);
}

}  // namespace moe_router
