#include "core/store/checksum_impl_internal.h"
#define XXH3_IMPL_NAME Xxh3Generic
#include "core/store/checksum_impl.inc"
