#ifndef MOE_ROUTER_CORE_SAFETENSORS_STORE_H_
#define MOE_ROUTER_CORE_SAFETENSORS_STORE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/expert_store.h"
#include "core/safetensors.h"

namespace moe_router {

/// Tensor-name prefix of an expert, with {layer} and {expert} placeholders.
inline constexpr char kMixtralExpertPattern[] =
    "model.layers.{layer}.block_sparse_moe.experts.{expert}.";
inline constexpr char kQwenMoeExpertPattern[] = "model.layers.{layer}.mlp.experts.{expert}.";

/// The pattern of a preset name: mixtral | qwen_moe | deepseek.
absl::StatusOr<std::string> ExpertPatternPreset(absl::string_view preset);

/// Name of the sidecar checksum manifest in each variant directory.
inline constexpr char kManifestFileName[] = "moe_router_manifest.json";

struct SafetensorsStoreOptions {
  /// A directory of *.safetensors files, or of one subdirectory per
  /// precision variant (e.g. Q4_K/, Q2_K/), each holding such files.
  std::string directory;
  std::string expert_pattern = kMixtralExpertPattern;
  /// Write the manifest when a variant has none (the first indexing).
  bool write_manifest = true;
};

struct ExpertPattern;  // a compiled expert_pattern (safetensors_store.cc)

/// Experts read from safetensors checkpoints with pread of exact byte
/// ranges, verified against per-tensor XXH3 checksums from the manifest.
///
///   auto store = SafetensorsStore::Open({.directory = "/models/mixtral"});
///   auto expert = (*store)->Load({.layer = 3, .expert = 5}, "default");
class SafetensorsStore final : public ExpertStore {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsStore>> Open(
      const SafetensorsStoreOptions& options);
  /// (Re)computes and atomically writes the manifest of every variant from
  /// the files as they are now. Returns the number of tensors indexed.
  static absl::StatusOr<size_t> WriteManifests(const SafetensorsStoreOptions& options);
  ~SafetensorsStore() override;

  std::vector<std::string> Precisions() const override;
  absl::StatusOr<ExpertInfo> Info(ExpertKey key, const std::string& precision) const override;
  absl::StatusOr<std::shared_ptr<const ExpertData>> Load(
      ExpertKey key, const std::string& precision) const override;
  std::string Describe() const override;

  /// Experts found, per variant (for checking a store against a model).
  size_t ExpertCount(const std::string& precision) const;
  /// Highest layer and expert id found plus one, over all variants.
  ExpertKey Extent() const;

  /// The variant name used when the directory holds the files itself.
  static constexpr char kDefaultVariant[] = "default";

 private:
  struct TensorRef {
    int file = 0;
    SafetensorsTensor tensor;
    uint64_t checksum = 0;
  };
  struct Variant {
    std::string name;
    std::string directory;
    std::vector<std::string> files;
    std::vector<int> fds;
    std::map<ExpertKey, std::vector<TensorRef>> experts;
  };
  SafetensorsStore() = default;
  static absl::StatusOr<Variant> IndexVariant(const std::string& name, const std::string& directory,
                                              const std::string& pattern, bool write_manifest,
                                              bool rewrite_manifest);
  // The steps of IndexVariant: the directory's files and their expert
  // tensors; then each tensor's checksum, from the manifest, or by hashing
  // the data (writing the manifest when `manifest_path` is not empty).
  static absl::Status FindExpertTensors(const ExpertPattern& pattern, Variant* v);
  static absl::Status ReadManifest(const std::string& manifest_path, Variant* v);
  static absl::Status HashTensors(Variant* v, const std::string& manifest_path,
                                  const std::string& pattern);
  const Variant* FindVariant(const std::string& precision) const;

  SafetensorsStoreOptions options_;
  std::vector<Variant> variants_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_SAFETENSORS_STORE_H_
