#ifndef MOE_ROUTER_CORE_STORE_SAFETENSORS_STORE_H_
#define MOE_ROUTER_CORE_STORE_SAFETENSORS_STORE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/store/expert_store.h"
#include "core/store/safetensors.h"

namespace moe_router {

/// Tensor-name prefix of an expert, with {layer} and {expert} placeholders.
inline constexpr char kMixtralExpertPattern[] =
    "model.layers.{layer}.block_sparse_moe.experts.{expert}.";
inline constexpr char kQwenMoeExpertPattern[] = "model.layers.{layer}.mlp.experts.{expert}.";

/// The pattern of a preset name: mixtral | qwen_moe | deepseek.
absl::StatusOr<std::string> ExpertPatternPreset(absl::string_view preset);

/// Name of the sidecar checksum manifest in each variant directory.
inline constexpr char kManifestFileName[] = "moe_router_manifest.json";

/// Where each tensor's checksum comes from, in this order:
/// - a manifest published beside the weights (`moe-router index DIR`,
///   kManifestFileName): used and checked against the files (pattern, names
///   and sizes), so corruption that predates the first start is caught;
/// - else one this store computed before and cached in manifest_cache_dir,
///   if the files are unchanged (same names, sizes and modification times);
/// - else hashing every expert tensor now, cached when there is a cache
///   directory. Nothing is ever written beside the weights by opening, so
///   read-only checkpoints (as Kubernetes mounts them) open.
struct SafetensorsStoreOptions {
  /// A directory of *.safetensors files, or of one subdirectory per
  /// precision variant (e.g. Q4_K/, Q2_K/), each holding such files.
  std::string directory;
  std::string expert_pattern = kMixtralExpertPattern;
  /// Where computed manifests are kept across starts ("" keeps them in
  /// memory only). A cache that cannot be written is not an error.
  std::string manifest_cache_dir = {};
  /// Asked between tensors while hashing: a status other than OK (a
  /// deadline, a cancellation) stops the open with it.
  std::function<absl::Status()> interrupted = nullptr;
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
  /// (Re)computes and atomically writes the published manifest of every
  /// variant, beside its weights, from the files as they are now
  /// (`moe-router index`). Returns the number of tensors indexed.
  static absl::StatusOr<size_t> WriteManifests(const SafetensorsStoreOptions& options);
  /// For layers [0, num_layers): the `length` values of the tensor
  /// `layer_pattern` names (its {layer} replaced), as float (F32, BF16 or
  /// F16; shape [length] or [1, length]), row-major, from the first variant
  /// (a router's biases are not quantised per variant). A layer without the
  /// tensor reads as zeros when the checkpoint has no expert of it
  /// (options.expert_pattern): a dense layer; else it is an error naming the
  /// tensor. Reads headers and those tensors only.
  static absl::StatusOr<std::vector<float>> ReadLayerVectors(const SafetensorsStoreOptions& options,
                                                             const std::string& layer_pattern,
                                                             uint32_t num_layers, uint32_t length);
  ~SafetensorsStore() override;

  std::vector<std::string> Precisions() const override;
  absl::StatusOr<ExpertInfo> Info(ExpertKey key, const std::string& precision) const override;
  absl::StatusOr<std::shared_ptr<const ExpertData>> Load(
      ExpertKey key, const std::string& precision) const override;
  std::string Describe() const override;

  /// An expert's tensors as Load gives them (names, dtypes, shapes, sizes,
  /// offsets, the manifest's checksums), without reading: for checking a
  /// checkpoint against the model that will compute with it.
  absl::StatusOr<std::vector<TensorData>> Tensors(ExpertKey key,
                                                  const std::string& precision) const;
  /// Experts found, per variant (for checking a store against a model).
  size_t ExpertCount(const std::string& precision) const;
  /// Highest layer and expert id found plus one, over all variants.
  ExpertKey Extent() const;

  /// The variant name used when the directory holds the files itself.
  static constexpr char kDefaultVariant[] = "default";

 private:
  struct FileStamp {
    uint64_t bytes = 0;
    int64_t mtime_ns = 0;
  };
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
    std::vector<FileStamp> stamps;  // per file, when indexed
    std::map<ExpertKey, std::vector<TensorRef>> experts;
  };
  SafetensorsStore() = default;
  // Indexes one variant: its files and expert tensors, then checksums as
  // the options describe; `publish` hashes and writes the published
  // manifest instead.
  static absl::StatusOr<Variant> IndexVariant(const std::string& name, const std::string& directory,
                                              const SafetensorsStoreOptions& options, bool publish);
  static absl::Status FindExpertTensors(const ExpertPattern& pattern, Variant* v);
  // Checksums from a manifest that must match the files: their sizes, and
  // with `check_mtime` their modification times too.
  static absl::Status ReadManifest(const std::string& manifest_path, const std::string& pattern,
                                   bool check_mtime, Variant* v);
  static absl::Status HashTensors(const std::function<absl::Status()>& interrupted, Variant* v);
  static absl::Status WriteManifest(const std::string& manifest_path, const std::string& pattern,
                                    const Variant& v);
  const Variant* FindVariant(const std::string& precision) const;
  absl::StatusOr<const std::vector<TensorRef>*> FindExpert(ExpertKey key,
                                                           const std::string& precision) const;

  SafetensorsStoreOptions options_;
  std::vector<Variant> variants_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_STORE_SAFETENSORS_STORE_H_
