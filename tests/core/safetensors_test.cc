#include "core/store/safetensors.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_replace.h"
#include "core/base/file_io.h"
#include "core/store/checksum.h"
#include "core/store/safetensors_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

void WriteRaw(const std::string& path, const std::string& header_json, const std::string& data,
              int64_t declared_len = -1) {
  std::string file;
  const uint64_t len = declared_len >= 0 ? static_cast<uint64_t>(declared_len) : header_json.size();
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  file += header_json + data;
  ASSERT_TRUE(WriteFileAtomically(path, file).ok());
}

TEST(SafetensorsHeaderTest, RoundTripsWhatWeWrite) {
  TempDir dir;
  const std::string path = dir.File("a.safetensors");
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"x", "F32", {2, 3}, testing::RandomBytes(24, 1)},
                                {"y", "BF16", {5}, testing::RandomBytes(10, 2)}},
                               {{"format", "pt"}})
                  .ok());
  auto header = ReadSafetensorsHeader(path);
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->tensors.size(), 2u);
  EXPECT_EQ(header->tensors[0].name, "x");
  EXPECT_EQ(header->tensors[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(header->tensors[0].size(), 24u);
  EXPECT_EQ(header->tensors[1].dtype, "BF16");
  EXPECT_EQ(header->metadata.at("format"), "pt");
  EXPECT_EQ(header->data_start % 8, 0u);
  EXPECT_EQ(header->file_size, header->data_start + 34);
}

TEST(SafetensorsHeaderTest, MalformedFilesAreClearErrorsNamingTheFile) {
  TempDir dir;
  const std::string path = dir.File("bad.safetensors");
  const auto error = [&]() {
    auto h = ReadSafetensorsHeader(path);
    EXPECT_FALSE(h.ok());
    return std::string(h.status().message());
  };
  ASSERT_TRUE(WriteFileAtomically(path, "abc").ok());
  EXPECT_THAT(error(), HasSubstr("bad.safetensors: shorter than the 8-byte header length"));
  WriteRaw(path, "{}", "", 1000);
  EXPECT_THAT(error(), HasSubstr("header length 1000 does not fit"));
  WriteRaw(path, "{not json", "");
  EXPECT_THAT(error(), HasSubstr("header is not a JSON object"));
  WriteRaw(path, R"({"t":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}})", "x");
  EXPECT_THAT(error(), HasSubstr("tensor 't': unknown dtype 'Q9'"));
  WriteRaw(path, R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", "xy");
  EXPECT_THAT(error(), HasSubstr("tensor 't': data_offsets [0, 4] lie outside the 2 data bytes"));
  WriteRaw(path, R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,4]}})", "abcd");
  EXPECT_THAT(error(), HasSubstr("4 bytes do not match shape and dtype (16 bytes)"));
  WriteRaw(path, R"({"t":{"dtype":"U8","shape":[1]}})", "a");
  EXPECT_THAT(error(), HasSubstr("data_offsets must be two unsigned integers"));
  WriteRaw(path, R"({"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "a");
  EXPECT_THAT(error(), HasSubstr("non-integer dimension"));
  WriteRaw(path,
           R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
           R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
           "abcdef");
  EXPECT_THAT(error(), HasSubstr("tensors 'a' and 'b' overlap in the file's bytes"));
  EXPECT_THAT(
      std::string(ReadSafetensorsHeader(dir.File("missing.safetensors")).status().message()),
      HasSubstr("missing.safetensors"));
}

class SafetensorsStoreTest : public ::testing::Test {
 protected:
  // Two shards: layers 0-1 in one, layer 2 in another, 4 experts each.
  // Returns every tensor's bytes by name, as written.
  std::map<std::string, std::string> WriteCheckpoint(const std::string& directory,
                                                     const std::string& pattern,
                                                     uint32_t rows = 16) {
    std::filesystem::create_directories(directory);
    std::map<std::string, std::string> written;
    for (auto& t : testing::WriteExpertShard(directory + "/model-00001.safetensors", 2, 4, rows, 1,
                                             pattern)) {
      written[t.name] = std::move(t.bytes);
    }
    // The second shard holds layer 2 only: write layers 0..2 then drop 0..1.
    std::vector<SafetensorsWriteTensor> layer2;
    for (auto& t : testing::WriteExpertShard(directory + "/tmp.bin", 3, 4, rows, 2, pattern)) {
      if (t.name.find("layers.2.") != std::string::npos) {
        written[t.name] = t.bytes;
        layer2.push_back(std::move(t));
      }
    }
    std::filesystem::remove(directory + "/tmp.bin");
    EXPECT_TRUE(WriteSafetensors(directory + "/model-00002.safetensors", layer2).ok());
    return written;
  }

  // Every expert of the store holds exactly the bytes written for its
  // tensors: a wrong offset would serve other bytes with agreeing checksums.
  static void ExpectServesWhatWasWritten(const SafetensorsStore& store,
                                         const std::string& precision,
                                         const std::map<std::string, std::string>& written) {
    size_t tensors = 0;
    for (uint32_t layer = 0; layer < 3; ++layer) {
      for (uint32_t expert = 0; expert < 4; ++expert) {
        auto loaded = store.Load({layer, expert}, precision);
        ASSERT_TRUE(loaded.ok()) << loaded.status();
        for (const TensorData& t : (*loaded)->tensors) {
          const absl::Span<const uint8_t> got = (*loaded)->TensorBytes(t);
          ASSERT_EQ(written.count(t.name), 1u) << t.name;
          EXPECT_EQ(std::string(got.begin(), got.end()), written.at(t.name)) << t.name;
          ++tensors;
        }
      }
    }
    EXPECT_EQ(tensors, 3u * 4 * 3);
  }
  TempDir dir_;
};

TEST_F(SafetensorsStoreTest, LoadsExpertsWithDtypesShapesAndChecksums) {
  const auto written = WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  auto store = SafetensorsStore::Open({.directory = dir_.path()});
  ASSERT_TRUE(store.ok()) << store.status();
  ExpectServesWhatWasWritten(**store, "default", written);
  EXPECT_EQ((*store)->Precisions(), std::vector<std::string>{"default"});
  EXPECT_EQ((*store)->ExpertCount("default"), 12u);
  EXPECT_EQ((*store)->Extent(), (ExpertKey{3, 4}));
  // Opening writes nothing beside the weights: they may be read-only.
  EXPECT_FALSE(std::filesystem::exists(dir_.File(kManifestFileName)));

  auto info = (*store)->Info({2, 3}, "default");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->bytes, 3u * 16 * 8 * 2);
  auto expert = (*store)->Load({2, 3}, "default");
  ASSERT_TRUE(expert.ok()) << expert.status();
  const ExpertData& e = **expert;
  ASSERT_EQ(e.tensors.size(), 3u);
  EXPECT_EQ(e.tensors[0].name, "model.layers.2.block_sparse_moe.experts.3.w1.weight");
  EXPECT_EQ(e.tensors[0].dtype, "BF16");
  EXPECT_EQ(e.tensors[0].shape, (std::vector<int64_t>{16, 8}));
  // The bytes are exactly the file's, and the checksums cover them.
  auto header = ReadSafetensorsHeader(dir_.path() + "/model-00002.safetensors");
  ASSERT_TRUE(header.ok());
  std::vector<std::pair<std::string, uint64_t>> digests;
  for (const TensorData& t : e.tensors) {
    EXPECT_EQ(t.checksum, Xxh3(e.TensorBytes(t)));
    digests.emplace_back(t.name, t.checksum);
  }
  EXPECT_EQ(e.checksum, ExpertChecksum(digests));
  // Tensors describes what Load gives, without reading.
  auto described = (*store)->Tensors({2, 3}, "default");
  ASSERT_TRUE(described.ok()) << described.status();
  ASSERT_EQ(described->size(), e.tensors.size());
  for (size_t i = 0; i < e.tensors.size(); ++i) {
    const TensorData& d = (*described)[i];
    EXPECT_EQ(d.name, e.tensors[i].name);
    EXPECT_EQ(d.dtype, e.tensors[i].dtype);
    EXPECT_EQ(d.shape, e.tensors[i].shape);
    EXPECT_EQ(d.offset, e.tensors[i].offset);
    EXPECT_EQ(d.size, e.tensors[i].size);
    EXPECT_EQ(d.checksum, e.tensors[i].checksum);
  }
  EXPECT_TRUE(absl::IsNotFound((*store)->Tensors({3, 0}, "default").status()));
  EXPECT_TRUE(absl::IsNotFound((*store)->Load({3, 0}, "default").status()));
  EXPECT_TRUE(absl::IsNotFound((*store)->Load({0, 0}, "Q2_K").status()));
}

TEST_F(SafetensorsStoreTest, CorruptionAfterIndexingIsDataLossNamingFileAndTensor) {
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  ASSERT_TRUE(SafetensorsStore::WriteManifests({.directory = dir_.path()}).ok());  // published
  const std::string shard = dir_.path() + "/model-00001.safetensors";
  auto header = ReadSafetensorsHeader(shard);
  ASSERT_TRUE(header.ok());
  const std::string victim = "model.layers.1.block_sparse_moe.experts.2.w3.weight";
  for (const auto& t : header->tensors) {
    if (t.name == victim) testing::CorruptByte(shard, t.begin + 5);
  }
  // An open trusts the published manifest, so the corruption is caught at load.
  auto store = SafetensorsStore::Open({.directory = dir_.path()});
  ASSERT_TRUE(store.ok());
  auto expert = (*store)->Load({1, 2}, "default");
  EXPECT_TRUE(absl::IsDataLoss(expert.status()));
  EXPECT_THAT(std::string(expert.status().message()),
              HasSubstr("checksum mismatch in file " + shard + ", tensor '" + victim + "'"));
  EXPECT_TRUE((*store)->Load({1, 1}, "default").ok());  // others unaffected
  // Re-indexing accepts the files as they are now.
  auto indexed = SafetensorsStore::WriteManifests({.directory = dir_.path()});
  ASSERT_TRUE(indexed.ok());
  EXPECT_EQ(*indexed, 36u);
  EXPECT_TRUE((*SafetensorsStore::Open({.directory = dir_.path()}))->Load({1, 2}, "default").ok());
}

// A checksum computed at a start is kept in the cache directory, keyed by
// the files' sizes and modification times, so bytes that rot later (same
// size and time) are caught at load after a restart, as with a published
// manifest. Without a cache, each start hashes afresh.
TEST_F(SafetensorsStoreTest, ComputedManifestIsCachedOutsideTheCheckpoint) {
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  const auto listing = [&] {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      names.insert(e.path().filename().string());
    }
    return names;
  };
  const std::set<std::string> before = listing();
  TempDir cache;
  const SafetensorsStoreOptions options{.directory = dir_.path(),
                                        .manifest_cache_dir = cache.File("manifests")};
  ASSERT_TRUE(SafetensorsStore::Open(options).ok());
  EXPECT_EQ(listing(), before);
  ASSERT_EQ(std::distance(std::filesystem::directory_iterator(cache.File("manifests")),
                          std::filesystem::directory_iterator()),
            1);

  const std::string shard = dir_.path() + "/model-00001.safetensors";
  const auto mtime = std::filesystem::last_write_time(shard);
  auto header = ReadSafetensorsHeader(shard);
  ASSERT_TRUE(header.ok());
  for (const auto& t : header->tensors) {
    if (t.name == "model.layers.0.block_sparse_moe.experts.1.w2.weight") {
      testing::CorruptByte(shard, t.begin);
    }
  }
  std::filesystem::last_write_time(shard, mtime);  // rot keeps the time
  auto cached = SafetensorsStore::Open(options);
  ASSERT_TRUE(cached.ok());
  size_t data_loss = 0;
  for (uint32_t l = 0; l < 2; ++l) {
    for (uint32_t e = 0; e < 4; ++e) {
      data_loss += absl::IsDataLoss((*cached)->Load({l, e}, "default").status());
    }
  }
  EXPECT_EQ(data_loss, 1u);
  EXPECT_TRUE(absl::IsDataLoss((*cached)->Load({0, 1}, "default").status()));
  auto uncached = SafetensorsStore::Open({.directory = dir_.path()});
  ASSERT_TRUE(uncached.ok());
  EXPECT_TRUE((*uncached)->Load({0, 1}, "default").ok());
}

TEST_F(SafetensorsStoreTest, PublishedManifestThatDisagreesWithTheDataIsRefused) {
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  ASSERT_TRUE(SafetensorsStore::WriteManifests({.directory = dir_.path()}).ok());
  // Another shard appears beside the indexed ones.
  testing::WriteExpertShard(dir_.File("model-00003.safetensors"), 1, 1, 4, 9,
                            "other.{layer}.{expert}.");
  auto store = SafetensorsStore::Open({.directory = dir_.path()});
  EXPECT_TRUE(absl::IsDataLoss(store.status()));
  EXPECT_THAT(std::string(store.status().message()),
              HasSubstr("disagrees with the data: it lists 2 files, the directory holds 3"));
  std::filesystem::remove(dir_.File("model-00003.safetensors"));
  // A shard of another size.
  const std::string shard = dir_.File("model-00002.safetensors");
  const std::string bytes = *ReadFile(shard);
  ASSERT_TRUE(WriteFileAtomically(shard, bytes + "tail").ok());
  store = SafetensorsStore::Open({.directory = dir_.path()});
  EXPECT_THAT(std::string(store.status().message()),
              HasSubstr("file model-00002.safetensors is " + std::to_string(bytes.size() + 4) +
                        " bytes, the manifest says " + std::to_string(bytes.size())));
  ASSERT_TRUE(WriteFileAtomically(shard, bytes).ok());
  // Another naming pattern.
  store = SafetensorsStore::Open(
      {.directory = dir_.path(),
       .expert_pattern = "model.layers.{layer}.block_sparse_moe.experts.{expert}.w"});
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("indexes tensors named like"));
  EXPECT_TRUE(SafetensorsStore::Open({.directory = dir_.path()}).ok());
}

TEST_F(SafetensorsStoreTest, HashingStopsWhenInterrupted) {
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  int asked = 0;
  auto store = SafetensorsStore::Open(
      {.directory = dir_.path(), .interrupted = [&]() -> absl::Status {
         return ++asked > 3 ? absl::DeadlineExceededError("the call's deadline passed")
                            : absl::OkStatus();
       }});
  EXPECT_TRUE(absl::IsDeadlineExceeded(store.status()));
  EXPECT_EQ(asked, 4);
}

TEST_F(SafetensorsStoreTest, TruncatedFileIsAnErrorNotACrash) {
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  auto store = SafetensorsStore::Open({.directory = dir_.path()});
  ASSERT_TRUE(store.ok());
  std::filesystem::resize_file(dir_.path() + "/model-00002.safetensors", 200);
  auto expert = (*store)->Load({2, 3}, "default");
  EXPECT_FALSE(expert.ok());
  EXPECT_THAT(std::string(expert.status().message()), HasSubstr("model-00002.safetensors"));
  // Reopening sees the header no longer fits its data.
  EXPECT_FALSE(SafetensorsStore::Open({.directory = dir_.path()}).ok());
}

TEST_F(SafetensorsStoreTest, CorruptManifestIsReported) {
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  ASSERT_TRUE(WriteFileAtomically(dir_.File(kManifestFileName), "{oops").ok());
  auto store = SafetensorsStore::Open({.directory = dir_.path()});
  EXPECT_TRUE(absl::IsDataLoss(store.status()));
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("moe-router index"));
}

TEST_F(SafetensorsStoreTest, QwenPresetAndPrecisionVariants) {
  auto pattern = ExpertPatternPreset("qwen_moe");
  ASSERT_TRUE(pattern.ok());
  EXPECT_EQ(*pattern, "model.layers.{layer}.mlp.experts.{expert}.");
  EXPECT_FALSE(ExpertPatternPreset("gpt").ok());
  const auto q4 = WriteCheckpoint(dir_.path() + "/Q4_K", *pattern, 32);
  const auto q2 = WriteCheckpoint(dir_.path() + "/Q2_K", *pattern, 16);
  auto store = SafetensorsStore::Open({.directory = dir_.path(), .expert_pattern = *pattern});
  ASSERT_TRUE(store.ok()) << store.status();
  ExpectServesWhatWasWritten(**store, "Q4_K", q4);
  ExpectServesWhatWasWritten(**store, "Q2_K", q2);
  EXPECT_EQ((*store)->Precisions(), (std::vector<std::string>{"Q2_K", "Q4_K"}));
  EXPECT_EQ((*store)->Info({0, 0}, "Q4_K")->bytes, 2 * (*store)->Info({0, 0}, "Q2_K")->bytes);
  auto cold = (*store)->Load({0, 0}, "Q2_K");
  ASSERT_TRUE(cold.ok());
  EXPECT_EQ((*cold)->precision, "Q2_K");
  // Mixtral names do not match the Qwen pattern.
  TempDir other;
  WriteCheckpoint(other.path(), kMixtralExpertPattern);
  EXPECT_THAT(
      std::string(SafetensorsStore::Open({.directory = other.path(), .expert_pattern = *pattern})
                      .status()
                      .message()),
      HasSubstr("no expert tensors matching"));
}

TEST_F(SafetensorsStoreTest, DuplicateTensorAcrossShardsIsAnError) {
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  std::filesystem::copy_file(dir_.path() + "/model-00002.safetensors",
                             dir_.path() + "/model-00003.safetensors");
  auto store = SafetensorsStore::Open({.directory = dir_.path()});
  EXPECT_TRUE(absl::IsInvalidArgument(store.status()));
  EXPECT_THAT(std::string(store.status().message()),
              HasSubstr("appears in both " + dir_.path() + "/model-00002.safetensors and"));
}

TEST_F(SafetensorsStoreTest, MissingDirectoryAndBadPattern) {
  EXPECT_TRUE(absl::IsNotFound(SafetensorsStore::Open({.directory = dir_.File("nope")}).status()));
  EXPECT_TRUE(absl::IsNotFound(SafetensorsStore::Open({.directory = dir_.path()}).status()));
  WriteCheckpoint(dir_.path(), kMixtralExpertPattern);
  EXPECT_TRUE(absl::IsInvalidArgument(
      SafetensorsStore::Open({.directory = dir_.path(), .expert_pattern = "model.{expert}.{layer}"})
          .status()));
}

}  // namespace
}  // namespace moe_router
