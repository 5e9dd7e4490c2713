#ifndef MOE_ROUTER_EVAL_NPY_H_
#define MOE_ROUTER_EVAL_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe_router {

/// numpy's .npy arrays (https://numpy.org/doc/stable/reference/generated/
/// numpy.lib.format.html), as inference engines dump routing and router
/// logits: format versions 1 to 3, C order, numeric dtypes of either byte
/// order. Every error names the file (or archive member).
struct NpyDtype {
  char kind = 0;      // 'i', 'u', 'b' (bool) or 'f'
  uint32_t size = 0;  // bytes per element
  bool big_endian = false;
  std::string descr;  // as the header spells it, for messages
};

struct NpyHeader {
  NpyDtype dtype;
  std::vector<uint64_t> shape;
  uint64_t elements = 0;     // the product of the shape
  uint64_t data_offset = 0;  // where the elements start in the file
  uint64_t data_bytes = 0;   // elements x dtype.size (checked for overflow)
};

/// The header at the start of an .npy file. `file_start` must hold the whole
/// header (the first 10 or 12 bytes say how long it is). A structured or
/// object dtype, Fortran order, or a shape whose size overflows is
/// INVALID_ARGUMENT naming `name` and what is wrong.
absl::StatusOr<NpyHeader> ParseNpyHeader(absl::string_view file_start, absl::string_view name);

struct NpyArray {
  std::string name;  // the file, or the archive member without ".npy"
  NpyHeader header;
  std::string bytes;  // the whole file; the elements start at data_offset
  absl::string_view data() const {
    return absl::string_view(bytes).substr(header.data_offset, header.data_bytes);
  }
};

/// An .npy file held in memory: its header, and exactly as many bytes of
/// elements after it as the header's shape needs (a truncated or padded
/// file is an error).
absl::StatusOr<NpyArray> ParseNpy(std::string bytes, absl::string_view name);
/// The .npy file at `path`; the header is checked against the file's size
/// before anything is allocated for its elements.
absl::StatusOr<NpyArray> ReadNpyFile(const std::string& path);
/// The arrays of an .npz archive (numpy.savez, stored, or
/// numpy.savez_compressed, deflated), in archive order, read with libzip.
/// Each member's declared size is checked against what its compressed size
/// can hold before it is allocated.
absl::StatusOr<std::vector<NpyArray>> ReadNpz(const std::string& path);
/// Whether `path` names an archive (.npz) rather than one array.
bool IsNpzPath(absl::string_view path);

/// The elements of an integer or bool array as int32, byte-swapped as the
/// header declares. A value outside int32 is INVALID_ARGUMENT naming the
/// array, the element's index and the value; a float array is refused.
absl::StatusOr<std::vector<int32_t>> NpyToInt32(const NpyArray& array);
/// The elements of a float16, float32 or float64 array as float32.
absl::StatusOr<std::vector<float>> NpyToFloat32(const NpyArray& array);

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_NPY_H_
