// Compiled with -mavx2 (see CMakeLists.txt); used only where the CPU has it.
#include "core/store/checksum_impl_internal.h"
#define XXH3_IMPL_NAME Xxh3Avx2
#include "core/store/checksum_impl.inc"
