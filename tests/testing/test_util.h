#ifndef MOE_ROUTER_TESTS_TESTING_TEST_UTIL_H_
#define MOE_ROUTER_TESTS_TESTING_TEST_UTIL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/store/safetensors.h"

namespace moe_router::testing {

/// A fresh empty directory under the test's temp dir, removed at exit of
/// the object.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Residency flags as a router reads them, one per expert, none set.
class Residency {
 public:
  explicit Residency(uint32_t n) : flags_(new std::atomic<uint8_t>[n]), n_(n) {
    for (uint32_t e = 0; e < n; ++e) flags_[e].store(0);
  }
  void Set(uint32_t e, bool resident) { flags_[e].store(resident ? 1 : 0); }
  bool Get(uint32_t e) const { return flags_[e].load() != 0; }
  const std::atomic<uint8_t>* get() const { return flags_.get(); }
  uint32_t size() const { return n_; }

 private:
  std::unique_ptr<std::atomic<uint8_t>[]> flags_;
  uint32_t n_;
};

/// Deterministic pseudo-random bytes.
std::string RandomBytes(size_t n, uint64_t seed);

/// Writes a Mixtral-style checkpoint shard: for each layer and expert, w1,
/// w2 and w3 tensors (BF16, shape {rows, 8}) under `pattern`, plus a dense
/// attention tensor that is not an expert. Returns the tensors written.
std::vector<SafetensorsWriteTensor> WriteExpertShard(const std::string& path, uint32_t layers,
                                                     uint32_t experts, uint32_t rows, uint64_t seed,
                                                     const std::string& pattern);

/// Flips one byte of a file in place at `offset`.
void CorruptByte(const std::string& path, uint64_t offset);

/// The shared real Mixtral trace beside the repository
/// (../shared/traces/mixtral-8x7b-gsm8k.jsonl), or "" when it is absent.
std::string SharedTracePath();

/// What a shell command printed (stdout and stderr) and its exit code.
struct CommandResult {
  std::string output;
  int exit_code = -1;
};
/// Runs `command` under a 10-minute kill guard, so a hung child fails the
/// test instead of hanging it.
CommandResult RunCommand(const std::string& command);

/// Polls `condition` until it holds or `timeout` passes; whether it held.
/// For waits on another thread's progress that must not hang a test.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(30));

/// Row-major random logits, tokens x experts.
std::vector<float> RandomLogits(uint32_t tokens, uint32_t experts, uint64_t seed,
                                float scale = 2.0f);

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_TEST_UTIL_H_
