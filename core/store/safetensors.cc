#include "core/store/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/base/file_io.h"
#include "core/base/json_number.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace {

// A header larger than this is not a checkpoint we should trust.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

}  // namespace

size_t SafetensorsDtypeSize(absl::string_view dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" ||
      dtype == "F8_E5M2") {
    return 1;
  }
  return 0;
}

namespace {

// Why a file is not a safetensors file we can read, naming it.
absl::Status Malformed(const std::string& path, const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrFormat("malformed safetensors file %s: %s", path, why));
}

// The JSON header of an open file of `file_size` bytes: its 8-byte
// little-endian length, checked against the file, then the text.
absl::StatusOr<std::string> ReadHeaderText(int fd, const std::string& path, uint64_t file_size) {
  if (file_size < 8) return Malformed(path, "shorter than the 8-byte header length");
  uint8_t len_bytes[8];
  if (!PreadExact(fd, len_bytes, 8, 0).ok())
    return Malformed(path, "cannot read the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8) {
    return Malformed(path, absl::StrFormat("header length %d does not fit the file (%d bytes)",
                                           header_len, file_size));
  }
  std::string text(header_len, '\0');
  if (!PreadExact(fd, text.data(), header_len, 8).ok()) {
    return Malformed(path, "cannot read the header");
  }
  return text;
}

// One tensor entry of the header, its byte range checked against the data
// section (`data_len` bytes from `data_start`) and against shape and dtype.
absl::StatusOr<SafetensorsTensor> ParseTensor(const std::string& path, const std::string& name,
                                              const nlohmann::json& value, uint64_t data_start,
                                              uint64_t data_len) {
  const auto bad = [&](const std::string& why) {
    return Malformed(path, absl::StrFormat("tensor '%s': %s", name, why));
  };
  if (!value.is_object()) return bad("entry is not an object");
  const auto dtype = value.find("dtype");
  const auto shape = value.find("shape");
  const auto offsets = value.find("data_offsets");
  if (dtype == value.end() || !dtype->is_string()) return bad("missing dtype");
  if (shape == value.end() || !shape->is_array()) return bad("missing shape");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return bad("data_offsets must be two unsigned integers");
  }
  SafetensorsTensor t;
  t.name = name;
  t.dtype = dtype->get<std::string>();
  const size_t elem = SafetensorsDtypeSize(t.dtype);
  if (elem == 0) return bad("unknown dtype '" + t.dtype + "'");
  uint64_t count = 1;
  for (const auto& d : *shape) {
    const absl::StatusOr<uint64_t> checked = JsonInteger<uint64_t>(d, "a shape dimension");
    if (!checked.ok()) return bad("shape has a non-integer dimension");
    const uint64_t dim = *checked;
    if (dim != 0 && count > (uint64_t{1} << 62) / dim) return bad("shape overflows");
    count *= dim;
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  const absl::StatusOr<std::vector<uint64_t>> range =
      JsonIntegers<uint64_t>(*offsets, "data_offsets");
  if (!range.ok()) return bad(std::string(range.status().message()));
  const uint64_t begin = (*range)[0];
  const uint64_t end = (*range)[1];
  if (begin > end || end > data_len) {
    return bad(absl::StrFormat("data_offsets [%d, %d] lie outside the %d data bytes of the file",
                               begin, end, data_len));
  }
  if (end - begin != count * elem) {
    return bad(absl::StrFormat("%d bytes do not match shape and dtype (%d bytes)", end - begin,
                               count * elem));
  }
  t.begin = data_start + begin;
  t.end = data_start + end;
  return t;
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoError("cannot stat", path);
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  absl::StatusOr<std::string> text = ReadHeaderText(fd, path, file_size);
  if (!text.ok()) return text.status();
  nlohmann::json json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object())
    return Malformed(path, "header is not a JSON object");

  SafetensorsHeader header;
  header.data_start = 8 + text->size();
  header.file_size = file_size;
  for (const auto& [name, value] : json.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return Malformed(path, "__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          return Malformed(path, "__metadata__ value of '" + k + "' is not a string");
        }
        header.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    absl::StatusOr<SafetensorsTensor> tensor =
        ParseTensor(path, name, value, header.data_start, file_size - header.data_start);
    if (!tensor.ok()) return tensor.status();
    header.tensors.push_back(*std::move(tensor));
  }
  // Two tensors sharing bytes would each verify, and serve, the other's.
  std::vector<const SafetensorsTensor*> by_offset;
  for (const SafetensorsTensor& t : header.tensors) {
    if (t.end > t.begin) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorsTensor& a = *by_offset[i - 1];
    const SafetensorsTensor& b = *by_offset[i];
    if (b.begin < a.end) {
      return Malformed(path, absl::StrFormat("tensors '%s' and '%s' overlap in the file's bytes "
                                             "[%d, %d) and [%d, %d)",
                                             a.name, b.name, a.begin, a.end, b.begin, b.end));
    }
  }
  return header;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsWriteTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  // Pad with spaces so the data starts 8-byte aligned, as the format suggests.
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::string file;
  file.reserve(8 + text.size() + offset);
  const uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  file += text;
  for (const auto& t : tensors) file += t.bytes;
  return WriteFileAtomically(path, file);
}

}  // namespace moe_router
