// The safetensors header parser on arbitrary files: it must return a
// status, never crash, read out of bounds or allocate from a length it has
// not checked against the file; what it accepts is self-consistent.
#include <cstdlib>

#include "core/store/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_router::fuzz::InputFile file(data, size);
  const auto header = moe_router::ReadSafetensorsHeader(file.path());
  if (!header.ok()) return 0;
  for (const auto& t : header->tensors) {
    if (t.begin < header->data_start || t.end < t.begin || t.end > header->file_size) std::abort();
  }
  return 0;
}
