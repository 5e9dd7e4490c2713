// The .npy reader on arbitrary bytes, in memory and from a file, and the
// .npz reader (libzip) on anything that starts like a ZIP archive: a status,
// or arrays whose bytes and converted elements agree with their shapes.
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "eval/npy.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void CheckArray(const moe_router::NpyArray& a) {
  if (a.data().size() != a.header.elements * a.header.dtype.size) std::abort();
  const bool is_float = a.header.dtype.kind == 'f';
  if (is_float) {
    const auto floats = moe_router::NpyToFloat32(a);
    if (!floats.ok() || floats->size() != a.header.elements) std::abort();
  } else {
    const auto ints = moe_router::NpyToInt32(a);
    if (ints.ok() && ints->size() != a.header.elements) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const auto in_memory = moe_router::ParseNpy(bytes, "fuzz");
  if (in_memory.ok()) CheckArray(*in_memory);
  const moe_router::fuzz::InputFile file(data, size);
  const auto from_file = moe_router::ReadNpyFile(file.path());
  if (from_file.ok() != in_memory.ok()) std::abort();
  if (absl::string_view(bytes).substr(0, 2) == "PK") {
    const auto archive = moe_router::ReadNpz(file.path());
    if (archive.ok()) {
      for (const auto& a : *archive) CheckArray(a);
    }
  }
  return 0;
}
