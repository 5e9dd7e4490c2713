#include "core/store/safetensors_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "core/base/file_io.h"
#include "core/base/float16.h"
#include "core/store/checksum.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace fs = std::filesystem;

// A compiled "{layer}" ... "{expert}" prefix pattern.
struct ExpertPattern {
  std::string head, middle, tail;

  static absl::StatusOr<ExpertPattern> Compile(const std::string& pattern) {
    const size_t l = pattern.find("{layer}");
    const size_t e = pattern.find("{expert}");
    if (l == std::string::npos || e == std::string::npos || e < l) {
      return absl::InvalidArgumentError(
          absl::StrFormat("expert pattern '%s' must contain {layer} and then {expert}", pattern));
    }
    return ExpertPattern{pattern.substr(0, l), pattern.substr(l + 7, e - l - 7),
                         pattern.substr(e + 8)};
  }

  // The expert a tensor name belongs to, if it matches the pattern.
  std::optional<ExpertKey> Match(absl::string_view name) const {
    if (!absl::ConsumePrefix(&name, head)) return std::nullopt;
    const auto number = [&](uint32_t* out) {
      const char* end = name.data() + name.size();
      const auto [ptr, ec] = std::from_chars(name.data(), end, *out);
      if (ec != std::errc() || ptr == name.data()) return false;
      name.remove_prefix(ptr - name.data());
      return true;
    };
    ExpertKey key;
    if (!number(&key.layer) || !absl::ConsumePrefix(&name, middle) || !number(&key.expert) ||
        !absl::StartsWith(name, tail)) {
      return std::nullopt;
    }
    return key;
  }
};

namespace {

// Reads are split so each chunk is hashed while still in the CPU cache.
constexpr uint64_t kReadChunk = 1 << 19;

std::string Hex(uint64_t v) { return absl::StrFormat("%016x", v); }

// Hashes one tensor range of a file, reading it into `dst` (or a scratch
// buffer when dst is null).
absl::StatusOr<uint64_t> ReadAndHash(int fd, const SafetensorsTensor& t, uint8_t* dst) {
  Xxh3Stream hash;
  std::unique_ptr<uint8_t[]> scratch;
  if (dst == nullptr) scratch = std::make_unique_for_overwrite<uint8_t[]>(kReadChunk);
  for (uint64_t done = 0; done < t.size();) {
    const uint64_t n = std::min(kReadChunk, t.size() - done);
    uint8_t* p = dst != nullptr ? dst + done : scratch.get();
    if (absl::Status s = PreadExact(fd, p, n, t.begin + done); !s.ok()) return s;
    hash.Update({p, n});
    done += n;
  }
  return hash.Digest();
}

}  // namespace

absl::StatusOr<std::string> ExpertPatternPreset(absl::string_view preset) {
  if (preset == "mixtral") return std::string(kMixtralExpertPattern);
  if (preset == "qwen_moe" || preset == "deepseek") return std::string(kQwenMoeExpertPattern);
  return absl::InvalidArgumentError(absl::StrFormat(
      "unknown expert name preset '%s' (expected mixtral, qwen_moe or deepseek)", preset));
}

absl::StatusOr<SafetensorsStore::Variant> SafetensorsStore::IndexVariant(
    const std::string& name, const std::string& directory, const SafetensorsStoreOptions& options,
    bool publish) {
  const std::string& pattern = options.expert_pattern;
  absl::StatusOr<ExpertPattern> compiled = ExpertPattern::Compile(pattern);
  if (!compiled.ok()) return compiled.status();
  Variant v;
  v.name = name;
  v.directory = directory;
  // Closes the files opened so far unless the variant is returned.
  struct FdCloser {
    std::vector<int>* fds;
    bool keep = false;
    ~FdCloser() {
      if (!keep)
        for (int fd : *fds) close(fd);
    }
  } closer{&v.fds};
  if (absl::Status s = FindExpertTensors(*compiled, &v); !s.ok()) return s;
  if (v.experts.empty()) {
    return absl::NotFoundError(
        absl::StrFormat("no expert tensors matching '%s' in the %d safetensors file(s) of %s",
                        pattern, v.files.size(), directory));
  }
  const std::string published = (fs::path(directory) / kManifestFileName).string();
  std::error_code ec;
  if (publish) {
    if (absl::Status s = HashTensors(options.interrupted, &v); !s.ok()) return s;
    if (absl::Status s = WriteManifest(published, pattern, v); !s.ok()) return s;
  } else if (fs::exists(published, ec)) {
    if (absl::Status s = ReadManifest(published, pattern, /*check_mtime=*/false, &v); !s.ok()) {
      return s;
    }
  } else {
    // Keyed by the directory's absolute path: one cache serves many
    // checkpoints.
    const std::string absolute = fs::absolute(directory, ec).string();
    const uint64_t key = Xxh3({reinterpret_cast<const uint8_t*>(absolute.data()), absolute.size()});
    const std::string cached =
        options.manifest_cache_dir.empty()
            ? ""
            : (fs::path(options.manifest_cache_dir) / (Hex(key) + ".manifest.json")).string();
    if (cached.empty() || !fs::exists(cached, ec) ||
        !ReadManifest(cached, pattern, /*check_mtime=*/true, &v).ok()) {
      if (absl::Status s = HashTensors(options.interrupted, &v); !s.ok()) return s;
      if (!cached.empty()) {
        fs::create_directories(options.manifest_cache_dir, ec);
        // A cache that cannot be written costs the next start a re-hash.
        WriteManifest(cached, pattern, v).IgnoreError();
      }
    }
  }
  closer.keep = true;
  return v;
}

absl::Status SafetensorsStore::FindExpertTensors(const ExpertPattern& pattern, Variant* v) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(v->directory, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") {
      v->files.push_back(entry.path().string());
    }
  }
  if (ec) {
    return absl::NotFoundError(absl::StrFormat("cannot list %s: %s", v->directory, ec.message()));
  }
  std::sort(v->files.begin(), v->files.end());
  for (size_t f = 0; f < v->files.size(); ++f) {
    absl::StatusOr<SafetensorsHeader> header = ReadSafetensorsHeader(v->files[f]);
    if (!header.ok()) return header.status();
    const int fd = open(v->files[f].c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError("cannot open", v->files[f]);
    v->fds.push_back(fd);
    struct stat st;
    if (fstat(fd, &st) != 0) return ErrnoError("cannot stat", v->files[f]);
    v->stamps.push_back({.bytes = static_cast<uint64_t>(st.st_size),
                         .mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec});
    for (SafetensorsTensor& t : header->tensors) {
      const std::optional<ExpertKey> key = pattern.Match(t.name);
      if (!key) continue;
      v->experts[*key].push_back(TensorRef{.file = static_cast<int>(f), .tensor = std::move(t)});
    }
  }
  // Each expert's tensors in name order (the order FetchExpert documents);
  // a name twice is two shards claiming one tensor.
  for (auto& [key, refs] : v->experts) {
    std::sort(refs.begin(), refs.end(),
              [](const TensorRef& a, const TensorRef& b) { return a.tensor.name < b.tensor.name; });
    for (size_t i = 1; i < refs.size(); ++i) {
      if (refs[i].tensor.name == refs[i - 1].tensor.name) {
        return absl::InvalidArgumentError(
            absl::StrFormat("tensor '%s' appears in both %s and %s", refs[i].tensor.name,
                            v->files[refs[i - 1].file], v->files[refs[i].file]));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status SafetensorsStore::ReadManifest(const std::string& manifest_path,
                                            const std::string& pattern, bool check_mtime,
                                            Variant* v) {
  absl::StatusOr<std::string> text = ReadFile(manifest_path);
  if (!text.ok()) return text.status();
  const nlohmann::json json = nlohmann::json::parse(*text, nullptr, false);
  if (json.is_discarded() || !json.is_object() || !json.contains("tensors") ||
      !json["tensors"].is_object()) {
    return absl::DataLossError(absl::StrFormat(
        "manifest %s is corrupt; rebuild it with 'moe-router index'", manifest_path));
  }
  const auto disagrees = [&](const std::string& what) {
    return absl::DataLossError(
        absl::StrFormat("manifest %s disagrees with the data: %s; rebuild it with 'moe-router "
                        "index' if the files are the ones to serve",
                        manifest_path, what));
  };
  if (json.contains("pattern") && json["pattern"] != pattern) {
    return disagrees(absl::StrFormat("it indexes tensors named like '%s', the store '%s'",
                                     json["pattern"].dump(), pattern));
  }
  // Manifests of format 1 predate the file list; they are checked by
  // tensor name only.
  if (const auto files = json.find("files"); files != json.end()) {
    if (!files->is_object() || files->size() != v->files.size()) {
      return disagrees(absl::StrFormat("it lists %d files, the directory holds %d",
                                       files->is_object() ? files->size() : 0, v->files.size()));
    }
    for (size_t f = 0; f < v->files.size(); ++f) {
      const std::string base = fs::path(v->files[f]).filename().string();
      const auto entry = files->find(base);
      if (entry == files->end() || !entry->is_object()) {
        return disagrees(absl::StrFormat("file %s is not in it", base));
      }
      const uint64_t bytes = entry->value("bytes", uint64_t{0});
      if (bytes != v->stamps[f].bytes) {
        return disagrees(absl::StrFormat("file %s is %d bytes, the manifest says %d", base,
                                         v->stamps[f].bytes, bytes));
      }
      if (check_mtime && entry->value("mtime_ns", int64_t{0}) != v->stamps[f].mtime_ns) {
        return disagrees(absl::StrFormat("file %s changed since it was indexed", base));
      }
    }
  }
  const nlohmann::json& sums = json["tensors"];
  for (auto& [key, refs] : v->experts) {
    for (TensorRef& ref : refs) {
      const auto it = sums.find(ref.tensor.name);
      uint64_t sum = 0;
      if (it == sums.end() || !it->is_string() ||
          !absl::SimpleHexAtoi(it->get<std::string>(), &sum)) {
        return absl::DataLossError(absl::StrFormat(
            "manifest %s has no checksum for tensor '%s' of file %s; rebuild it with "
            "'moe-router index'",
            manifest_path, ref.tensor.name, v->files[ref.file]));
      }
      ref.checksum = sum;
    }
  }
  return absl::OkStatus();
}

absl::Status SafetensorsStore::HashTensors(const std::function<absl::Status()>& interrupted,
                                           Variant* v) {
  for (auto& [key, refs] : v->experts) {
    for (TensorRef& ref : refs) {
      if (interrupted != nullptr) {
        if (absl::Status s = interrupted(); !s.ok()) return s;
      }
      absl::StatusOr<uint64_t> sum = ReadAndHash(v->fds[ref.file], ref.tensor, nullptr);
      if (!sum.ok()) {
        return absl::DataLossError(absl::StrFormat("cannot read tensor '%s' of file %s: %s",
                                                   ref.tensor.name, v->files[ref.file],
                                                   sum.status().message()));
      }
      ref.checksum = *sum;
    }
  }
  return absl::OkStatus();
}

absl::Status SafetensorsStore::WriteManifest(const std::string& manifest_path,
                                             const std::string& pattern, const Variant& v) {
  nlohmann::json files = nlohmann::json::object();
  for (size_t f = 0; f < v.files.size(); ++f) {
    files[fs::path(v.files[f]).filename().string()] = {{"bytes", v.stamps[f].bytes},
                                                       {"mtime_ns", v.stamps[f].mtime_ns}};
  }
  nlohmann::json sums = nlohmann::json::object();
  for (const auto& [key, refs] : v.experts) {
    for (const TensorRef& ref : refs) sums[ref.tensor.name] = Hex(ref.checksum);
  }
  const nlohmann::json manifest = {{"format", "moe-router-manifest/2"},
                                   {"pattern", pattern},
                                   {"files", files},
                                   {"tensors", sums}};
  return WriteFileAtomically(manifest_path, manifest.dump(1));
}

namespace {

// The variants of a store directory, as (name, directory): the directory
// itself if it holds safetensors files, and each subdirectory that does.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> DiscoverVariants(
    const std::string& directory) {
  std::error_code ec;
  if (!fs::is_directory(directory, ec)) {
    return absl::NotFoundError(
        absl::StrFormat("safetensors store %s is not a directory", directory));
  }
  std::vector<std::pair<std::string, std::string>> variants;
  bool has_files = false;
  for (const auto& entry : fs::directory_iterator(directory, ec)) {
    if (entry.is_directory()) {
      for (const auto& inner : fs::directory_iterator(entry.path(), ec)) {
        if (inner.path().extension() == ".safetensors") {
          variants.emplace_back(entry.path().filename().string(), entry.path().string());
          break;
        }
      }
    } else if (entry.path().extension() == ".safetensors") {
      has_files = true;
    }
  }
  std::sort(variants.begin(), variants.end());
  if (has_files) {
    variants.insert(variants.begin(), {SafetensorsStore::kDefaultVariant, directory});
  }
  if (variants.empty()) {
    return absl::NotFoundError(
        absl::StrFormat("no *.safetensors files in %s or its subdirectories", directory));
  }
  return variants;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsStore>> SafetensorsStore::Open(
    const SafetensorsStoreOptions& options) {
  auto variants = DiscoverVariants(options.directory);
  if (!variants.ok()) return variants.status();
  auto store = std::unique_ptr<SafetensorsStore>(new SafetensorsStore());
  store->options_ = options;
  for (const auto& [name, dir] : *variants) {
    absl::StatusOr<Variant> v = IndexVariant(name, dir, options, /*publish=*/false);
    if (!v.ok()) return v.status();
    store->variants_.push_back(*std::move(v));
  }
  return store;
}

absl::StatusOr<size_t> SafetensorsStore::WriteManifests(const SafetensorsStoreOptions& options) {
  auto variants = DiscoverVariants(options.directory);
  if (!variants.ok()) return variants.status();
  size_t tensors = 0;
  for (const auto& [name, dir] : *variants) {
    absl::StatusOr<Variant> v = IndexVariant(name, dir, options, /*publish=*/true);
    if (!v.ok()) return v.status();
    for (const auto& [key, refs] : v->experts) tensors += refs.size();
    for (int fd : v->fds) close(fd);
  }
  return tensors;
}

absl::StatusOr<std::vector<float>> SafetensorsStore::ReadLayerVectors(
    const SafetensorsStoreOptions& options, const std::string& layer_pattern, uint32_t num_layers,
    uint32_t length) {
  if (layer_pattern.find("{layer}") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer tensor pattern '%s' must contain {layer}", layer_pattern));
  }
  absl::StatusOr<ExpertPattern> experts = ExpertPattern::Compile(options.expert_pattern);
  if (!experts.ok()) return experts.status();
  auto variants = DiscoverVariants(options.directory);
  if (!variants.ok()) return variants.status();
  const std::string& directory = variants->front().second;
  // Every tensor by name, and the layers with experts.
  struct Found {
    std::string file;
    SafetensorsTensor tensor;
  };
  std::map<std::string, Found> tensors;
  std::vector<bool> has_experts(num_layers, false);
  std::error_code ec;
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(directory, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  for (const std::string& file : files) {
    absl::StatusOr<SafetensorsHeader> header = ReadSafetensorsHeader(file);
    if (!header.ok()) return header.status();
    for (SafetensorsTensor& t : header->tensors) {
      if (const std::optional<ExpertKey> key = experts->Match(t.name);
          key && key->layer < num_layers) {
        has_experts[key->layer] = true;
      }
      std::string name = t.name;
      tensors.emplace(std::move(name), Found{file, std::move(t)});
    }
  }
  std::vector<float> out(size_t{num_layers} * length, 0.0f);
  for (uint32_t l = 0; l < num_layers; ++l) {
    const std::string name = absl::StrReplaceAll(layer_pattern, {{"{layer}", absl::StrCat(l)}});
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      if (!has_experts[l]) continue;
      return absl::NotFoundError(absl::StrFormat(
          "tensor '%s' is not in the safetensors files of %s, and layer %d has experts", name,
          directory, l));
    }
    const SafetensorsTensor& t = it->second.tensor;
    const bool shape_ok = (t.shape.size() == 1 && t.shape[0] == int64_t{length}) ||
                          (t.shape.size() == 2 && t.shape[0] == 1 && t.shape[1] == int64_t{length});
    const size_t width = SafetensorsDtypeSize(t.dtype);
    if (!shape_ok || !(t.dtype == "F32" || t.dtype == "BF16" || t.dtype == "F16")) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor '%s' in %s is %s of shape [%s]; expected F32, BF16 or F16 of [%d] or [1, %d]",
          name, it->second.file, t.dtype, absl::StrJoin(t.shape, ", "), length, length));
    }
    std::vector<uint8_t> bytes(size_t{length} * width);
    const int fd = open(it->second.file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError("cannot open", it->second.file);
    const absl::Status read = PreadExact(fd, bytes.data(), bytes.size(), t.begin);
    close(fd);
    if (!read.ok()) return read;
    float* row = out.data() + size_t{l} * length;
    for (uint32_t i = 0; i < length; ++i) {
      if (t.dtype == "F32") {
        std::memcpy(&row[i], bytes.data() + size_t{i} * 4, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, bytes.data() + size_t{i} * 2, 2);
        row[i] = t.dtype == "BF16" ? BFloat16ToFloat(h) : HalfToFloat(h);
      }
    }
  }
  return out;
}

SafetensorsStore::~SafetensorsStore() {
  for (const Variant& v : variants_) {
    for (int fd : v.fds) close(fd);
  }
}

std::vector<std::string> SafetensorsStore::Precisions() const {
  std::vector<std::string> names;
  for (const Variant& v : variants_) names.push_back(v.name);
  return names;
}

const SafetensorsStore::Variant* SafetensorsStore::FindVariant(const std::string& precision) const {
  for (const Variant& v : variants_) {
    if (v.name == precision) return &v;
  }
  return nullptr;
}

absl::StatusOr<const std::vector<SafetensorsStore::TensorRef>*> SafetensorsStore::FindExpert(
    ExpertKey key, const std::string& precision) const {
  const Variant* v = FindVariant(precision);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("store %s has no precision variant '%s'", options_.directory, precision));
  }
  const auto it = v->experts.find(key);
  if (it == v->experts.end()) {
    return absl::NotFoundError(absl::StrFormat("expert %s not found in %s (pattern '%s')",
                                               key.ToString(), v->directory,
                                               options_.expert_pattern));
  }
  return &it->second;
}

absl::StatusOr<ExpertInfo> SafetensorsStore::Info(ExpertKey key,
                                                  const std::string& precision) const {
  absl::StatusOr<const std::vector<TensorRef>*> refs = FindExpert(key, precision);
  if (!refs.ok()) return refs.status();
  ExpertInfo info;
  for (const TensorRef& ref : **refs) info.bytes += ref.tensor.size();
  return info;
}

absl::StatusOr<std::vector<TensorData>> SafetensorsStore::Tensors(
    ExpertKey key, const std::string& precision) const {
  absl::StatusOr<const std::vector<TensorRef>*> refs = FindExpert(key, precision);
  if (!refs.ok()) return refs.status();
  std::vector<TensorData> tensors;
  uint64_t offset = 0;
  for (const TensorRef& ref : **refs) {
    tensors.push_back(TensorData{.name = ref.tensor.name,
                                 .dtype = ref.tensor.dtype,
                                 .shape = ref.tensor.shape,
                                 .offset = offset,
                                 .size = ref.tensor.size(),
                                 .checksum = ref.checksum});
    offset += ref.tensor.size();
  }
  return tensors;
}

absl::StatusOr<std::shared_ptr<const ExpertData>> SafetensorsStore::Load(
    ExpertKey key, const std::string& precision) const {
  absl::StatusOr<ExpertInfo> info = Info(key, precision);
  if (!info.ok()) return info.status();
  const Variant& v = *FindVariant(precision);
  const std::vector<TensorRef>& refs = v.experts.at(key);

  auto data = std::make_shared<ExpertData>();
  data->key = key;
  data->precision = precision;
  data->size = info->bytes;
  data->bytes = AllocateExpertBytes(info->bytes);
  std::vector<std::pair<std::string, uint64_t>> digests;
  uint64_t offset = 0;
  for (const TensorRef& ref : refs) {
    absl::StatusOr<uint64_t> sum =
        ReadAndHash(v.fds[ref.file], ref.tensor, data->bytes.get() + offset);
    if (!sum.ok()) {
      return absl::DataLossError(absl::StrFormat("cannot read tensor '%s' of file %s: %s",
                                                 ref.tensor.name, v.files[ref.file],
                                                 sum.status().message()));
    }
    if (*sum != ref.checksum) {
      return absl::DataLossError(
          absl::StrFormat("checksum mismatch in file %s, tensor '%s': expected %s, read %s",
                          v.files[ref.file], ref.tensor.name, Hex(ref.checksum), Hex(*sum)));
    }
    data->tensors.push_back(TensorData{.name = ref.tensor.name,
                                       .dtype = ref.tensor.dtype,
                                       .shape = ref.tensor.shape,
                                       .offset = offset,
                                       .size = ref.tensor.size(),
                                       .checksum = *sum});
    digests.emplace_back(ref.tensor.name, *sum);
    offset += ref.tensor.size();
  }
  data->checksum = ExpertChecksum(digests);
  return data;
}

std::string SafetensorsStore::Describe() const {
  std::string variants;
  for (const Variant& v : variants_) {
    absl::StrAppendFormat(&variants, "%s%s (%d experts)", variants.empty() ? "" : ", ", v.name,
                          v.experts.size());
  }
  return absl::StrFormat("safetensors store %s: %s", options_.directory, variants);
}

size_t SafetensorsStore::ExpertCount(const std::string& precision) const {
  const Variant* v = FindVariant(precision);
  return v == nullptr ? 0 : v->experts.size();
}

ExpertKey SafetensorsStore::Extent() const {
  ExpertKey extent;
  for (const Variant& v : variants_) {
    for (const auto& [key, refs] : v.experts) {
      extent.layer = std::max(extent.layer, key.layer + 1);
      extent.expert = std::max(extent.expert, key.expert + 1);
    }
  }
  return extent;
}

}  // namespace moe_router
