#ifndef MOE_ROUTER_TESTS_FUZZ_FUZZ_UTIL_H_
#define MOE_ROUTER_TESTS_FUZZ_FUZZ_UTIL_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace moe_router::fuzz {

/// The fuzz input as a file the readers under test open by path: an
/// in-memory file (memfd), so fuzzing never touches the disk.
class InputFile {
 public:
  InputFile(const uint8_t* data, size_t size) {
    fd_ = memfd_create("fuzz-input", MFD_CLOEXEC);
    if (fd_ < 0) std::abort();
    for (size_t done = 0; done < size;) {
      const ssize_t n = write(fd_, data + done, size - done);
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~InputFile() { close(fd_); }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace moe_router::fuzz

#endif  // MOE_ROUTER_TESTS_FUZZ_FUZZ_UTIL_H_
