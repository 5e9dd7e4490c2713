#ifndef MOE_ROUTER_CORE_STORE_SAFETENSORS_H_
#define MOE_ROUTER_CORE_STORE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe_router {

/// One tensor entry of a safetensors header, with absolute file offsets.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // absolute offset in the file
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<SafetensorsTensor> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;
  uint64_t file_size = 0;
};

/// Bytes per element of a safetensors dtype, or 0 if unknown.
size_t SafetensorsDtypeSize(absl::string_view dtype);

/// Reads and validates the header of a safetensors file: 8-byte
/// little-endian length, JSON header, raw data. Every tensor must have a
/// known dtype, a shape matching its byte range, and lie inside the file.
/// Errors name the file and, where it applies, the tensor.
absl::StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path);

/// A tensor to write.
struct SafetensorsWriteTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

/// Writes a safetensors file atomically (temp file, fsync, rename).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsWriteTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_STORE_SAFETENSORS_H_
