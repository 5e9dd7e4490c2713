#include "core/base/file_io.h"

#include <signal.h>
#include <sys/resource.h>

#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

// The names in `dir`, so a test sees every temporary left behind.
std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

TEST(FileIoTest, WriteFileAtomicallyCreatesAndReplaces) {
  testing::TempDir dir;
  const std::string path = dir.File("state.json");
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  EXPECT_EQ(*ReadFile(path), "first");
  const std::string big = testing::RandomBytes(3 << 20, 1);
  ASSERT_TRUE(WriteFileAtomically(path, big).ok());
  EXPECT_TRUE(*ReadFile(path) == big);
  EXPECT_THAT(Listing(dir.path()), ::testing::ElementsAre("state.json"));
}

// Holds RLIMIT_FSIZE at `bytes` (writes past it fail with EFBIG) for the
// scope, with SIGXFSZ ignored so the failure is an error, not a kill.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = signal(SIGXFSZ, SIG_IGN);
    rlimit limited = saved_;
    limited.rlim_cur = bytes;
    EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  sighandler_t old_handler_;
};

TEST(FileIoTest, AFailedWriteKeepsThePreviousFileAndLeavesNoTemporary) {
  testing::TempDir dir;
  const std::string path = dir.File("state.json");
  ASSERT_TRUE(WriteFileAtomically(path, "previous").ok());
  absl::Status s;
  {
    FileSizeLimit limit(4096);
    s = WriteFileAtomically(path, std::string(1 << 20, 'x'));  // fails mid-write
  }
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("cannot write " + path + ".tmp."));
  EXPECT_EQ(*ReadFile(path), "previous");
  EXPECT_THAT(Listing(dir.path()), ::testing::ElementsAre("state.json"));

  // The rename fails (the target is a non-empty directory): no temporary.
  const std::string taken = dir.File("taken");
  std::filesystem::create_directories(taken + "/inside");
  s = WriteFileAtomically(taken, "data");
  EXPECT_THAT(std::string(s.message()), HasSubstr("cannot rename into " + taken));
  EXPECT_THAT(Listing(dir.path()), ::testing::UnorderedElementsAre("state.json", "taken"));
  // The directory does not exist: nothing is created.
  s = WriteFileAtomically(dir.File("absent/state.json"), "data");
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("cannot create " + dir.File("absent/state.json")));
}

// Piece by piece: nothing at the path until Commit; a writer dropped
// before it leaves the previous file and no temporary.
TEST(FileIoTest, AtomicFileWriterShowsNothingUntilCommit) {
  testing::TempDir dir;
  const std::string path = dir.File("trace.jsonl");
  ASSERT_TRUE(WriteFileAtomically(path, "previous").ok());
  {
    absl::StatusOr<AtomicFileWriter> w = AtomicFileWriter::Create(path);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE(w->Append("half").ok());
    EXPECT_EQ(*ReadFile(path), "previous");
  }
  EXPECT_EQ(*ReadFile(path), "previous");
  EXPECT_THAT(Listing(dir.path()), ::testing::ElementsAre("trace.jsonl"));
  absl::StatusOr<AtomicFileWriter> w = AtomicFileWriter::Create(path);
  ASSERT_TRUE(w.ok()) << w.status();
  for (const char* piece : {"one ", "two ", "three"}) ASSERT_TRUE(w->Append(piece).ok());
  ASSERT_TRUE(w->Commit().ok());
  EXPECT_EQ(*ReadFile(path), "one two three");
  EXPECT_THAT(Listing(dir.path()), ::testing::ElementsAre("trace.jsonl"));
  EXPECT_TRUE(absl::IsFailedPrecondition(w->Append("more")));
}

TEST(FileIoTest, PathInDirectoryKeepsEveryNameInside) {
  EXPECT_EQ(*PathInDirectory("/var/state", "m.state.json"), "/var/state/m.state.json");
  EXPECT_EQ(*PathInDirectory("/var/state", "..m"), "/var/state/..m");
  for (const std::string& name :
       {std::string(""), std::string("."), std::string(".."), std::string("../m"),
        std::string("a/b"), std::string("/etc"), std::string("a\0b", 3)}) {
    const auto path = PathInDirectory("/var/state", name);
    EXPECT_TRUE(absl::IsInvalidArgument(path.status())) << name;
    EXPECT_THAT(std::string(path.status().message()),
                HasSubstr("not a file name inside /var/state"));
  }
}

TEST(FileIoTest, ReadFileNamesAMissingFile) {
  testing::TempDir dir;
  const auto missing = ReadFile(dir.File("nope"));
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("cannot open " + dir.File("nope")));
}

}  // namespace
}  // namespace moe_router
