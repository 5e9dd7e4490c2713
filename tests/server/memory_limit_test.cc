#include "server/memory_limit.h"

#include <filesystem>

#include "core/base/file_io.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

TEST(MemoryLimitTest, CgroupLimitWinsOverPhysicalMemoryLessHeadroom) {
  testing::TempDir root;
  MemoryLimit limit = MemoryLimitFrom(root.path(), 24 * kGiB);
  EXPECT_EQ(limit.bytes, 24 * kGiB - kServerHeadroomBytes);
  EXPECT_EQ(limit.source, "physical memory");

  ASSERT_TRUE(WriteFileAtomically(root.File("memory.max"), "max\n").ok());
  EXPECT_EQ(MemoryLimitFrom(root.path(), 24 * kGiB).source, "physical memory");

  ASSERT_TRUE(WriteFileAtomically(root.File("memory.max"), "8589934592\n").ok());
  limit = MemoryLimitFrom(root.path(), 24 * kGiB);
  EXPECT_EQ(limit.bytes, 8 * kGiB - kServerHeadroomBytes);
  EXPECT_EQ(limit.source, "cgroup " + root.File("memory.max"));
}

TEST(MemoryLimitTest, CgroupV1UnlimitedIsNoLimit) {
  testing::TempDir root;
  std::filesystem::create_directories(root.File("memory"));
  ASSERT_TRUE(
      WriteFileAtomically(root.File("memory/memory.limit_in_bytes"), "9223372036854771712\n").ok());
  EXPECT_EQ(MemoryLimitFrom(root.path(), 4 * kGiB).source, "physical memory");
  ASSERT_TRUE(WriteFileAtomically(root.File("memory/memory.limit_in_bytes"), "2147483648").ok());
  EXPECT_EQ(MemoryLimitFrom(root.path(), 4 * kGiB).bytes, 2 * kGiB - kServerHeadroomBytes);
}

TEST(MemoryLimitTest, NoRoomLeftIsZeroNotAWrap) {
  testing::TempDir root;
  EXPECT_EQ(MemoryLimitFrom(root.path(), kServerHeadroomBytes / 2).bytes, 0u);
}

TEST(ByteSizeFlagTest, ParsesUnitsAndRefusesNonsense) {
  ByteSize size;
  std::string error;
  ASSERT_TRUE(AbslParseFlag("512", &size, &error));
  EXPECT_EQ(size.bytes, 512u);
  ASSERT_TRUE(AbslParseFlag("64M", &size, &error));
  EXPECT_EQ(size.bytes, uint64_t{64} << 20);
  ASSERT_TRUE(AbslParseFlag("20GiB", &size, &error));
  EXPECT_EQ(size.bytes, 20 * kGiB);
  ASSERT_TRUE(AbslParseFlag("256Mi", &size, &error));
  EXPECT_EQ(size.bytes, uint64_t{256} << 20);
  ASSERT_TRUE(AbslParseFlag("1.5g", &size, &error));
  EXPECT_EQ(size.bytes, 3 * kGiB / 2);
  ASSERT_TRUE(AbslParseFlag("18446744073709551615", &size, &error));
  EXPECT_EQ(size.bytes, ~uint64_t{0});
  for (const char* bad : {"", "-1", "lots", "nan", "1e30", "99999999999T", "5X"}) {
    EXPECT_FALSE(AbslParseFlag(bad, &size, &error)) << bad;
    EXPECT_NE(error.find("is not a byte count"), std::string::npos) << bad;
  }
  EXPECT_EQ(AbslUnparseFlag(ByteSize{4096}), "4096");
}

}  // namespace
}  // namespace moe_router
