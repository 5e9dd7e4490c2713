#include "core/base/resource_name.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

TEST(ResourceNameTest, AcceptsOnlyTheDocumentedCharacters) {
  for (const std::string& name :
       {std::string("m"), std::string("mixtral-8x7b"), std::string("Qwen1.5-MoE_A2.7B"),
        std::string("a.."), std::string(kMaxResourceNameLength, 'x')}) {
    EXPECT_TRUE(CheckResourceName("model.name", name).ok()) << name;
  }
  for (const std::string& name :
       {std::string(""), std::string("."), std::string(".."), std::string("../x"),
        std::string(".hidden"), std::string("a/b"), std::string("a\\b"), std::string("a b"),
        std::string("caf\xc3\xa9"), std::string("a\0b", 3), std::string("tab\t"),
        std::string(kMaxResourceNameLength + 1, 'x')}) {
    const absl::Status s = CheckResourceName("cache", name);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << name;
    EXPECT_THAT(std::string(s.message()), HasSubstr("cache '"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("1 to 128 characters of A-Z a-z 0-9 . _ -"));
  }
}

TEST(ResourceNameTest, ErrorsQuoteLongOrUnprintableNamesShortAndEscaped) {
  const absl::Status huge = CheckResourceName("model.name", std::string(1 << 20, '/'));
  EXPECT_LT(huge.message().size(), 300u);
  EXPECT_THAT(std::string(huge.message()), HasSubstr("... (1048576 characters)"));
  EXPECT_THAT(std::string(CheckResourceName("model.name", std::string("a\nb")).message()),
              HasSubstr("'a\\x0ab'"));
}

}  // namespace
}  // namespace moe_router
