#include "server/memory_limit.h"

#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "core/base/file_io.h"

namespace moe_router {
namespace {

// A cgroup file's limit, or 0 when it has none ("max", or v1's near-2^63
// "unlimited").
uint64_t CgroupLimit(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  uint64_t bytes = 0;
  if (!text.ok() || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &bytes)) return 0;
  return bytes >= (uint64_t{1} << 62) ? 0 : bytes;
}

}  // namespace

MemoryLimit MemoryLimitFrom(const std::string& cgroup_root, uint64_t physical_bytes) {
  MemoryLimit limit{.bytes = physical_bytes, .source = "physical memory"};
  for (const char* file : {"/memory.max", "/memory/memory.limit_in_bytes"}) {
    const std::string path = cgroup_root + file;
    if (const uint64_t bytes = CgroupLimit(path); bytes != 0 && bytes < limit.bytes) {
      limit = {.bytes = bytes, .source = "cgroup " + path};
      break;
    }
  }
  limit.bytes = limit.bytes > kServerHeadroomBytes ? limit.bytes - kServerHeadroomBytes : 0;
  return limit;
}

MemoryLimit DefaultMemoryLimit() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_bytes = sysconf(_SC_PAGE_SIZE);
  const uint64_t physical =
      pages > 0 && page_bytes > 0 ? uint64_t(pages) * uint64_t(page_bytes) : ~uint64_t{0};
  return MemoryLimitFrom("/sys/fs/cgroup", physical);
}

bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error) {
  absl::string_view number = absl::StripAsciiWhitespace(text);
  uint64_t multiplier = 1;
  // "20GiB", "20GB", and Kubernetes' "20Gi".
  absl::ConsumeSuffix(&number, "iB") || absl::ConsumeSuffix(&number, "B") ||
      absl::ConsumeSuffix(&number, "i");
  if (!number.empty()) {
    const char unit = absl::ascii_toupper(number.back());
    const size_t shift = unit == 'K'   ? 10
                         : unit == 'M' ? 20
                         : unit == 'G' ? 30
                         : unit == 'T' ? 40
                                       : 0;
    if (shift != 0) {
      multiplier = uint64_t{1} << shift;
      number.remove_suffix(1);
    }
  }
  // Whole numbers exactly; fractions ("1.5G") through a double.
  uint64_t whole = 0;
  double value = 0;
  if (absl::SimpleAtoi(number, &whole) && whole <= ~uint64_t{0} / multiplier) {
    size->bytes = whole * multiplier;
    return true;
  }
  if (!absl::SimpleAtod(number, &value) || !(value >= 0) ||
      value * static_cast<double>(multiplier) >= 18446744073709549568.0) {
    *error = absl::StrFormat("'%s' is not a byte count (like 512, 64M, 20GiB)", text);
    return false;
  }
  size->bytes = static_cast<uint64_t>(value * static_cast<double>(multiplier) + 0.5);
  return true;
}

std::string AbslUnparseFlag(ByteSize size) { return absl::StrFormat("%d", size.bytes); }

}  // namespace moe_router
