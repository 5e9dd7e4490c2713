#ifndef MOE_ROUTER_CORE_BASE_FILE_IO_H_
#define MOE_ROUTER_CORE_BASE_FILE_IO_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe_router {

/// An UNAVAILABLE error "<what> <path>: <strerror(errno)>".
absl::Status ErrnoError(absl::string_view what, const std::string& path);

/// pread(2) of exactly n bytes at offset, retrying short reads; DATA_LOSS on
/// end of file or a read error.
absl::Status PreadExact(int fd, void* buf, size_t n, uint64_t offset);

/// Writes `contents` to `path` atomically: a temp file beside it, fsync,
/// rename, fsync of the directory. A reader sees the old or the new file.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

/// The same, for contents written piece by piece (too large to hold whole):
/// Append to the temp file, then Commit renames it into place. A writer
/// destroyed or failed before Commit removes its temp file and leaves
/// `path` as it was.
class AtomicFileWriter {
 public:
  static absl::StatusOr<AtomicFileWriter> Create(const std::string& path);
  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&&) = delete;
  ~AtomicFileWriter();
  absl::Status Append(absl::string_view data);
  absl::Status Commit();

 private:
  AtomicFileWriter() = default;
  void Discard();
  std::string path_, tmp_;
  int fd_ = -1;
};

/// `directory/file_name`. A file name that is not one plain path component
/// (empty, ".", "..", or holding '/' or a NUL) is INVALID_ARGUMENT, so no
/// name reaches outside the directory whatever rule made it.
absl::StatusOr<std::string> PathInDirectory(const std::string& directory,
                                            absl::string_view file_name);

/// The whole file, or an error naming it.
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_BASE_FILE_IO_H_
