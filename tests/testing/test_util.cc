#include "tests/testing/test_util.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace moe_router::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/moe_router_test_XXXXXX";
  char* made = mkdtemp(tmpl.data());
  EXPECT_NE(made, nullptr);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

std::vector<SafetensorsWriteTensor> WriteExpertShard(const std::string& path, uint32_t layers,
                                                     uint32_t experts, uint32_t rows, uint64_t seed,
                                                     const std::string& pattern) {
  std::vector<SafetensorsWriteTensor> tensors;
  tensors.push_back({"model.embed_tokens.weight", "BF16", {4, 8}, RandomBytes(64, seed)});
  for (uint32_t l = 0; l < layers; ++l) {
    for (uint32_t e = 0; e < experts; ++e) {
      const std::string prefix = absl::StrReplaceAll(
          pattern, {{"{layer}", absl::StrCat(l)}, {"{expert}", absl::StrCat(e)}});
      for (const char* w : {"w1", "w2", "w3"}) {
        tensors.push_back({prefix + w + ".weight",
                           "BF16",
                           {rows, 8},
                           RandomBytes(size_t{rows} * 8 * 2, seed + l * 1000 + e * 10 + w[1])});
      }
    }
  }
  EXPECT_TRUE(WriteSafetensors(path, tensors).ok());
  return tensors;
}

void CorruptByte(const std::string& path, uint64_t offset) {
  const int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0xff;
  ASSERT_EQ(pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  close(fd);
}

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  // The whole command line (which may chain commands) runs under one guard.
  const std::string guarded =
      "timeout -k 10 600 sh -c '" + absl::StrReplaceAll(command, {{"'", "'\\''"}}) + "' 2>&1";
  FILE* p = popen(guarded.c_str(), "r");
  if (p == nullptr) return result;
  char buf[4096];
  while (fgets(buf, sizeof buf, p) != nullptr) result.output += buf;
  const int status = pclose(p);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Microseconds(100));
  }
  return true;
}

std::string SharedTracePath() {
  const std::string path =
      std::string(MOE_ROUTER_SOURCE_DIR) + "/../shared/traces/mixtral-8x7b-gsm8k.jsonl";
  return std::filesystem::exists(path) ? path : "";
}

std::vector<float> RandomLogits(uint32_t tokens, uint32_t experts, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, scale);
  std::vector<float> logits(size_t{tokens} * experts);
  for (float& x : logits) x = noise(rng);
  return logits;
}

}  // namespace moe_router::testing
