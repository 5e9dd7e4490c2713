#ifndef MOE_ROUTER_CORE_STORE_EXPERT_STORE_H_
#define MOE_ROUTER_CORE_STORE_EXPERT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/base/types.h"
#include "core/store/expert_bytes.h"

namespace moe_router {

/// One tensor of an expert, as it travels with the expert.
struct TensorData {
  std::string name;
  std::string dtype;  // safetensors dtype name, e.g. "BF16"
  std::vector<int64_t> shape;
  uint64_t offset = 0;    // into ExpertData::bytes
  uint64_t size = 0;      // bytes
  uint64_t checksum = 0;  // XXH3-64 of the tensor's bytes
};

/// A fully loaded and verified expert. Immutable once built; shared by the
/// cache and every reader holding it.
struct ExpertData {
  ExpertKey key;
  std::string precision;
  std::vector<TensorData> tensors;
  ExpertBytes bytes;
  uint64_t size = 0;
  /// XXH3-64 over the tensor names and checksums, in order (see checksum.h).
  uint64_t checksum = 0;

  absl::Span<const uint8_t> TensorBytes(const TensorData& t) const {
    return {bytes.get() + t.offset, t.size};
  }
};

/// What the cache needs to know before loading: the bytes to reserve.
struct ExpertInfo {
  uint64_t bytes = 0;
};

/// Where experts are paged in from. Implementations are thread-safe: the
/// paging pool calls Load from several workers at once.
class ExpertStore {
 public:
  virtual ~ExpertStore() = default;

  /// Precision variants this store holds; the first is the default.
  virtual std::vector<std::string> Precisions() const = 0;
  /// Size, without reading the data. NOT_FOUND for an
  /// expert or precision the store lacks.
  virtual absl::StatusOr<ExpertInfo> Info(ExpertKey key, const std::string& precision) const = 0;
  /// Reads and verifies the expert. A checksum mismatch is DATA_LOSS naming
  /// the file and tensor; a read error names the file.
  virtual absl::StatusOr<std::shared_ptr<const ExpertData>> Load(
      ExpertKey key, const std::string& precision) const = 0;
  /// A one-line description for logs and stats.
  virtual std::string Describe() const = 0;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_STORE_EXPERT_STORE_H_
