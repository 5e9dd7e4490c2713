// The .npy reader on headers built byte by byte, as numpy's format
// specification lays them out.
#include "eval/npy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// An .npy file: magic, version, little-endian header length, the dict
// padded with spaces to a multiple of 64 and ended by '\n', then `data`.
std::string Npy(const std::string& dict, const std::string& data, int version = 1) {
  const size_t prefix = version == 1 ? 10 : 12;
  std::string header = dict;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(version);
  out += '\0';
  for (size_t b = 0; b < prefix - 8; ++b)
    out += static_cast<char>((header.size() >> (8 * b)) & 0xff);
  return out + header + data;
}

std::string Bytes(std::initializer_list<int> values) {
  std::string s;
  for (int v : values) s += static_cast<char>(v);
  return s;
}

std::string ErrorOf(const absl::StatusOr<NpyArray>& a) {
  return a.ok() ? "ok" : std::string(a.status().message());
}

TEST(NpyTest, ReadsEveryIntegerWidthInEitherByteOrder) {
  absl::StatusOr<NpyArray> le =
      ParseNpy(Npy("{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }",
                   Bytes({1, 0, 0xff, 0xff, 0, 1})),
               "le");
  ASSERT_TRUE(le.ok()) << le.status();
  EXPECT_THAT(le->header.shape, ElementsAre(3));
  EXPECT_THAT(*NpyToInt32(*le), ElementsAre(1, -1, 256));
  absl::StatusOr<NpyArray> be =
      ParseNpy(Npy("{'descr': '>u4', 'fortran_order': False, 'shape': (2,), }",
                   Bytes({0, 0, 1, 2, 0x7f, 0xff, 0xff, 0xff})),
               "be");
  ASSERT_TRUE(be.ok()) << be.status();
  EXPECT_THAT(*NpyToInt32(*be), ElementsAre(258, 2147483647));
  // Version 2 (4-byte header length), a bool array and a scalar shape.
  absl::StatusOr<NpyArray> flags = ParseNpy(
      Npy("{\"descr\": \"|b1\", \"fortran_order\": False, \"shape\": (2, 1)}", Bytes({1, 0}), 2),
      "v2");
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_THAT(*NpyToInt32(*flags), ElementsAre(1, 0));
  absl::StatusOr<NpyArray> scalar = ParseNpy(
      Npy("{'descr': '<i8', 'fortran_order': False, 'shape': ()}", std::string(8, '\0')), "scalar");
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_EQ(scalar->header.elements, 1u);
}

TEST(NpyTest, FloatsOfEveryWidthConvertExactly) {
  // float16 1.0, -2.5, +inf, the smallest subnormal; big-endian float64 0.75.
  absl::StatusOr<NpyArray> half =
      ParseNpy(Npy("{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }",
                   Bytes({0x00, 0x3c, 0x00, 0xc1, 0x00, 0x7c, 0x01, 0x00})),
               "half");
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_THAT(*NpyToFloat32(*half), ElementsAre(1.0f, -2.5f, INFINITY, std::ldexp(1.0f, -24)));
  absl::StatusOr<NpyArray> wide = ParseNpy(
      Npy("{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }",
          Bytes({0x3f, 0xe8, 0, 0, 0, 0, 0, 0, 0x7f, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})),
      "wide");
  ASSERT_TRUE(wide.ok()) << wide.status();
  // The largest double is beyond float: infinite, not undefined behaviour.
  EXPECT_THAT(*NpyToFloat32(*wide), ElementsAre(0.75f, INFINITY));
}

TEST(NpyTest, ValuesOutsideInt32AreRefusedNamingTheElement) {
  absl::StatusOr<NpyArray> big =
      ParseNpy(Npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
                   Bytes({1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0})),
               "ids.npy");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(NpyToInt32(*big).status().message(), "ids.npy: element 1 is 2147483648, outside int32");
  absl::StatusOr<NpyArray> huge = ParseNpy(
      Npy("{'descr': '<u8', 'fortran_order': False, 'shape': (1,), }", std::string(8, '\xff')),
      "u.npy");
  ASSERT_TRUE(huge.ok());
  EXPECT_THAT(NpyToInt32(*huge).status().message(), HasSubstr("18446744073709551615"));
}

TEST(NpyTest, MalformedHeadersAreRefusedNamingWhatIsWrong) {
  const auto error = [](const std::string& dict, const std::string& data = "") {
    return ErrorOf(ParseNpy(Npy(dict, data), "x.npy"));
  };
  EXPECT_EQ(ErrorOf(ParseNpy("PK\x03\x04", "x.npy")),
            "x.npy: not an .npy file (no \\x93NUMPY magic)");
  EXPECT_THAT(error("{'descr': '<i4', 'shape': (1,)}"), HasSubstr("no 'fortran_order'"));
  EXPECT_THAT(error("{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}"),
              HasSubstr("dtype '<c8' is not supported"));
  EXPECT_THAT(error("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,)}"),
              HasSubstr("is not supported"));
  EXPECT_THAT(error("{'descr': '<i4', 'fortran_order': False, 'shape': (-1,)}"),
              HasSubstr("'shape' holds '-1', not a dimension"));
  EXPECT_THAT(error("{'descr': '<i4', 'fortran_order': False, 'shape': (99999999999999999999,)}"),
              HasSubstr("not a dimension"));
  EXPECT_THAT(error("{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, "
                    "4294967296)}"),
              HasSubstr("overflows"));
  EXPECT_THAT(error("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), 'shape': (2,)}"),
              HasSubstr("'shape' twice"));
  EXPECT_THAT(error("{'descr': '<i4' 'fortran_order': False}"), HasSubstr("no ',' between"));
  EXPECT_THAT(error("{'descr': '<i4', 'fortran_order': False, 'shape': (2,)}", "abcd"),
              HasSubstr("needs 8 bytes of data, the file has 4 (truncated)"));
  EXPECT_THAT(error("{'descr': '<i4', 'fortran_order': False, 'shape': (1,)}", "abcdefgh"),
              HasSubstr("needs 4 bytes of data, the file has 8"));
  std::string lying = Npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1,)}", "abcd");
  lying[8] = '\xff';  // a header longer than the file
  EXPECT_THAT(ErrorOf(ParseNpy(lying, "x.npy")), HasSubstr("truncated in the header"));
}

// A header promising a terabyte is refused from the file's size, before
// anything is allocated for it.
TEST(NpyTest, AFileIsSizedFromItsHeaderBeforeItsElementsAreRead) {
  testing::TempDir dir;
  const std::string path = dir.File("huge.npy");
  std::ofstream(path, std::ios::binary)
      << Npy("{'descr': '<i8', 'fortran_order': False, 'shape': (137438953472,)}", "12345678");
  EXPECT_THAT(ErrorOf(ReadNpyFile(path)),
              HasSubstr("needs 1099511627776 bytes of data, the file has 8 (truncated)"));
  std::ofstream(dir.File("ok.npy"), std::ios::binary) << Npy(
      "{'descr': '<i4', 'fortran_order': False, 'shape': (2,)}", Bytes({7, 0, 0, 0, 9, 0, 0, 0}));
  absl::StatusOr<NpyArray> ok = ReadNpyFile(dir.File("ok.npy"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(*NpyToInt32(*ok), ElementsAre(7, 9));
}

}  // namespace
}  // namespace moe_router
