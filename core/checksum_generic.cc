#include "core/checksum_impl_internal.h"
#define XXH3_IMPL_NAME Xxh3Generic
#include "core/checksum_impl.inc"
