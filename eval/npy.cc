#include "eval/npy.h"

#include <zip.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/file_io.h"
#include "core/base/float16.h"

namespace moe_router {
namespace {

constexpr absl::string_view kMagic = "\x93NUMPY";
// Beyond this a header is not numpy's (it writes a few hundred bytes); the
// bound keeps a lying length from sizing a read.
constexpr uint64_t kMaxHeaderBytes = 1 << 20;

absl::Status Bad(absl::string_view name, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", why));
}

// The header is a Python dict literal, e.g.
//   {'descr': '<i8', 'fortran_order': False, 'shape': (12, 58, 8), }
// Values are strings, True/False, or tuples of integers; a list (a
// structured dtype) is refused by the caller as an unsupported descr.
class DictScanner {
 public:
  explicit DictScanner(absl::string_view text) : text_(text) {}

  absl::StatusOr<std::map<std::string, std::string>> Parse() {
    std::map<std::string, std::string> out;
    if (!Eat('{')) return Error("the header is not a dict");
    while (!Eat('}')) {
      absl::StatusOr<std::string> key = Quoted();
      if (!key.ok()) return key.status();
      if (!Eat(':')) return Error(absl::StrCat("no ':' after '", *key, "'"));
      absl::StatusOr<std::string> value = Value();
      if (!value.ok()) return value.status();
      if (!out.emplace(*key, *value).second) return Error(absl::StrCat("'", *key, "' twice"));
      if (!Eat(',') && !Peek('}')) return Error("no ',' between entries");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("text after the dict");
    return out;
  }

 private:
  absl::Status Error(absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrFormat("bad header at offset %d: %s", pos_, why));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && absl::ascii_isspace(text_[pos_])) ++pos_;
  }
  bool Peek(char c) {
    SkipSpace();
    return pos_ < text_.size() && text_[pos_] == c;
  }
  bool Eat(char c) {
    if (!Peek(c)) return false;
    ++pos_;
    return true;
  }
  absl::StatusOr<std::string> Quoted() {
    SkipSpace();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) {
      return Error("expected a quoted string");
    }
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == absl::string_view::npos) return Error("an unterminated string");
    std::string s(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return s;
  }
  // A value as text: a string's contents, "True"/"False", or a tuple or
  // list with its brackets (nested brackets balanced).
  absl::StatusOr<std::string> Value() {
    SkipSpace();
    if (pos_ >= text_.size()) return Error("a missing value");
    const char c = text_[pos_];
    if (c == '\'' || c == '"') return Quoted();
    if (c == '(' || c == '[') {
      const size_t start = pos_;
      int depth = 0;
      for (; pos_ < text_.size(); ++pos_) {
        if (text_[pos_] == '(' || text_[pos_] == '[') ++depth;
        if (text_[pos_] == ')' || text_[pos_] == ']') --depth;
        if (depth == 0) return std::string(text_.substr(start, ++pos_ - start));
      }
      return Error("an unterminated tuple");
    }
    for (absl::string_view word : {"True", "False"}) {
      if (absl::StartsWith(text_.substr(pos_), word)) {
        pos_ += word.size();
        return std::string(word);
      }
    }
    return Error("a value that is not a string, a bool or a tuple");
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

absl::StatusOr<NpyDtype> ParseDescr(absl::string_view descr, absl::string_view name) {
  NpyDtype d;
  d.descr = std::string(descr);
  const auto unsupported = [&] {
    return Bad(name, absl::StrFormat("dtype '%s' is not supported (integers, bools and float16/32/"
                                     "64 are)",
                                     descr));
  };
  if (descr.size() < 3 || !absl::SimpleAtoi(descr.substr(2), &d.size)) return unsupported();
  const char order = descr[0];
  d.kind = descr[1];
  if (order != '<' && order != '>' && order != '|' && order != '=') return unsupported();
  // '|' is "not applicable" (one byte); '=' is the writer's native order,
  // which numpy spells out as '<' or '>' whenever it matters.
  d.big_endian = order == '>';
  const bool known = ((d.kind == 'i' || d.kind == 'u') &&
                      (d.size == 1 || d.size == 2 || d.size == 4 || d.size == 8)) ||
                     (d.kind == 'b' && d.size == 1) ||
                     (d.kind == 'f' && (d.size == 2 || d.size == 4 || d.size == 8));
  if (!known) return unsupported();
  return d;
}

absl::StatusOr<std::vector<uint64_t>> ParseShape(absl::string_view tuple, absl::string_view name) {
  if (tuple.size() < 2 || tuple.front() != '(' || tuple.back() != ')') {
    return Bad(name, absl::StrCat("'shape' is not a tuple: ", tuple));
  }
  std::vector<uint64_t> shape;
  for (absl::string_view part : absl::StrSplit(tuple.substr(1, tuple.size() - 2), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;  // "(5,)" and "()"
    uint64_t dim = 0;
    // SimpleAtoi refuses signs, junk and values past 2^64.
    if (part[0] == '-' || !absl::SimpleAtoi(part, &dim)) {
      return Bad(name, absl::StrCat("'shape' holds '", part, "', not a dimension"));
    }
    shape.push_back(dim);
  }
  return shape;
}

uint16_t Le16(const char* p) {
  return static_cast<uint16_t>(static_cast<uint8_t>(p[0]) | (static_cast<uint8_t>(p[1]) << 8));
}
uint32_t Le32(const char* p) { return Le16(p) | (static_cast<uint32_t>(Le16(p + 2)) << 16); }

static_assert(std::endian::native == std::endian::little, "elements are loaded as little-endian");

// Element i of an array of U, in the byte order the header declares.
template <typename U>
U Load(const char* data, uint64_t i, bool big_endian) {
  U v;
  std::memcpy(&v, data + i * sizeof(U), sizeof(U));
  if (!big_endian) return v;
  if constexpr (sizeof(U) == 2) return __builtin_bswap16(v);
  if constexpr (sizeof(U) == 4) return __builtin_bswap32(v);
  if constexpr (sizeof(U) == 8) return __builtin_bswap64(v);
  return v;
}

template <typename U>
absl::Status IntsToInt32(const NpyArray& array, std::vector<int32_t>& out) {
  using S = std::make_signed_t<U>;
  const bool is_signed = array.header.dtype.kind == 'i';
  const bool big = array.header.dtype.big_endian;
  const char* data = array.data().data();
  constexpr int64_t kMin = std::numeric_limits<int32_t>::min();
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (uint64_t i = 0; i < out.size(); ++i) {
    const U bits = Load<U>(data, i, big);
    if (is_signed) {
      const int64_t v = static_cast<S>(bits);
      if (v < kMin || v > kMax) {
        return Bad(array.name, absl::StrFormat("element %d is %d, outside int32", i, v));
      }
      out[i] = static_cast<int32_t>(v);
    } else {
      if (bits > static_cast<uint64_t>(kMax)) {
        return Bad(array.name, absl::StrFormat("element %d is %d, outside int32", i,
                                               static_cast<uint64_t>(bits)));
      }
      out[i] = static_cast<int32_t>(bits);
    }
  }
  return absl::OkStatus();
}

float DoubleToFloat(double d) {
  // Out of float's range is infinite, explicitly: the plain conversion of
  // such a double is undefined behaviour.
  if (std::isfinite(d) && std::fabs(d) > std::numeric_limits<float>::max()) {
    return d > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  }
  return static_cast<float>(d);
}

absl::Status CheckDataSize(const NpyHeader& h, uint64_t have, absl::string_view name) {
  if (have == h.data_bytes) return absl::OkStatus();
  return Bad(name, absl::StrFormat("shape (%s) of %s needs %d bytes of data, the file has %d%s",
                                   absl::StrJoin(h.shape, ", "), h.dtype.descr, h.data_bytes, have,
                                   have < h.data_bytes ? " (truncated)" : ""));
}

}  // namespace

absl::StatusOr<NpyHeader> ParseNpyHeader(absl::string_view file_start, absl::string_view name) {
  if (!absl::StartsWith(file_start, kMagic) || file_start.size() < 10) {
    return Bad(name, "not an .npy file (no \\x93NUMPY magic)");
  }
  const uint8_t major = static_cast<uint8_t>(file_start[6]);
  if (major < 1 || major > 3) {
    return Bad(name, absl::StrFormat("format version %d is not one of 1, 2, 3", major));
  }
  const uint64_t prefix = major == 1 ? 10 : 12;
  if (file_start.size() < prefix) return Bad(name, "truncated in the header");
  const uint64_t length = major == 1 ? Le16(file_start.data() + 8) : Le32(file_start.data() + 8);
  if (length > kMaxHeaderBytes) {
    return Bad(name, absl::StrFormat("a header of %d bytes is not numpy's", length));
  }
  if (file_start.size() < prefix + length) return Bad(name, "truncated in the header");
  NpyHeader h;
  h.data_offset = prefix + length;
  auto dict = DictScanner(file_start.substr(prefix, length)).Parse();
  if (!dict.ok()) return Bad(name, dict.status().message());
  for (const char* key : {"descr", "fortran_order", "shape"}) {
    if (!dict->count(key)) return Bad(name, absl::StrCat("the header has no '", key, "'"));
  }
  absl::StatusOr<NpyDtype> dtype = ParseDescr(dict->at("descr"), name);
  if (!dtype.ok()) return dtype.status();
  h.dtype = *std::move(dtype);
  if (dict->at("fortran_order") != "False") {
    return Bad(name, "Fortran-order arrays are not supported (save numpy.ascontiguousarray(a))");
  }
  absl::StatusOr<std::vector<uint64_t>> shape = ParseShape(dict->at("shape"), name);
  if (!shape.ok()) return shape.status();
  h.shape = *std::move(shape);
  h.elements = 1;
  for (uint64_t dim : h.shape) {
    if (dim != 0 && h.elements > std::numeric_limits<uint64_t>::max() / dim / h.dtype.size) {
      return Bad(name, absl::StrCat("shape (", absl::StrJoin(h.shape, ", "), ") overflows"));
    }
    h.elements *= dim;
  }
  h.data_bytes = h.elements * h.dtype.size;
  return h;
}

absl::StatusOr<NpyArray> ParseNpy(std::string bytes, absl::string_view name) {
  absl::StatusOr<NpyHeader> header = ParseNpyHeader(bytes, name);
  if (!header.ok()) return header.status();
  if (absl::Status s = CheckDataSize(*header, bytes.size() - header->data_offset, name); !s.ok()) {
    return s;
  }
  NpyArray a;
  a.name = std::string(name);
  a.header = *std::move(header);
  a.bytes = std::move(bytes);
  return a;
}

absl::StatusOr<NpyArray> ReadNpyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("cannot open", path);
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  // The header first; the elements only once the header's shape agrees
  // with the file's size, so a header cannot make this allocate.
  std::string bytes(std::min<uint64_t>(size, 12 + kMaxHeaderBytes), '\0');
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!in) return ErrnoError("cannot read", path);
  absl::StatusOr<NpyHeader> header = ParseNpyHeader(bytes, path);
  if (!header.ok()) return header.status();
  if (absl::Status s = CheckDataSize(*header, size - header->data_offset, path); !s.ok()) return s;
  const uint64_t have = bytes.size();
  bytes.resize(size);
  in.read(bytes.data() + have, static_cast<std::streamsize>(size - have));
  if (!in) return ErrnoError("cannot read", path);
  return ParseNpy(std::move(bytes), path);
}

namespace {

// A member's `size` bytes, read in chunks so that the buffer grows only as
// the data really arrives.
absl::StatusOr<std::string> ReadMember(zip_file_t* file, uint64_t size, absl::string_view where) {
  constexpr uint64_t kChunk = 1 << 20;
  std::string bytes;
  while (bytes.size() < size) {
    const uint64_t want = std::min(kChunk, size - bytes.size());
    const size_t have = bytes.size();
    bytes.resize(have + want);
    const zip_int64_t got = zip_fread(file, bytes.data() + have, want);
    if (got <= 0) {
      return Bad(where, absl::StrFormat("cannot be read at byte %d of %d: %s", have, size,
                                        got < 0 ? zip_file_strerror(file) : "the data ends"));
    }
    bytes.resize(have + static_cast<uint64_t>(got));
  }
  return bytes;
}

}  // namespace

bool IsNpzPath(absl::string_view path) { return absl::EndsWith(path, ".npz"); }

absl::StatusOr<std::vector<NpyArray>> ReadNpz(const std::string& path) {
  int code = 0;
  std::unique_ptr<zip_t, decltype(&zip_discard)> archive(zip_open(path.c_str(), ZIP_RDONLY, &code),
                                                         &zip_discard);
  if (!archive) {
    zip_error_t error;
    zip_error_init_with_code(&error, code);
    const std::string why = zip_error_strerror(&error);
    zip_error_fini(&error);
    return Bad(path, absl::StrCat("not a readable .npz (ZIP) archive: ", why));
  }
  const zip_int64_t members = zip_get_num_entries(archive.get(), 0);
  std::error_code size_error;
  const uint64_t archive_bytes = std::filesystem::file_size(path, size_error);
  if (size_error) return Bad(path, absl::StrCat("cannot stat: ", size_error.message()));
  std::vector<NpyArray> arrays;
  for (zip_int64_t i = 0; i < members; ++i) {
    zip_stat_t st;
    if (zip_stat_index(archive.get(), i, 0, &st) != 0 || !(st.valid & ZIP_STAT_NAME) ||
        !(st.valid & ZIP_STAT_SIZE) || !(st.valid & ZIP_STAT_COMP_SIZE)) {
      return Bad(path, absl::StrFormat("member %d: %s", i, zip_strerror(archive.get())));
    }
    const std::string member = st.name;
    const std::string where = absl::StrCat(path, ":", member);
    if (!absl::EndsWith(member, ".npy")) return Bad(where, "not an .npy member");
    // Deflate expands at most 1032:1, and no member is larger than its
    // archive: a larger claim is a corrupt or hostile archive, refused
    // before it sizes an allocation.
    if (st.comp_size > archive_bytes || st.size > 1100 * st.comp_size + 1024) {
      return Bad(where, absl::StrFormat("claims %d bytes from %d compressed in a %d-byte archive",
                                        st.size, st.comp_size, archive_bytes));
    }
    std::unique_ptr<zip_file_t, decltype(&zip_fclose)> file(zip_fopen_index(archive.get(), i, 0),
                                                            &zip_fclose);
    if (!file) return Bad(where, zip_strerror(archive.get()));
    absl::StatusOr<std::string> bytes = ReadMember(file.get(), st.size, where);
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<NpyArray> array =
        ParseNpy(*std::move(bytes), member.substr(0, member.size() - 4));
    if (!array.ok()) return Bad(path, array.status().message());
    arrays.push_back(*std::move(array));
  }
  if (arrays.empty()) return Bad(path, "the archive holds no arrays");
  return arrays;
}

absl::StatusOr<std::vector<int32_t>> NpyToInt32(const NpyArray& array) {
  const NpyDtype& d = array.header.dtype;
  if (d.kind == 'f') {
    return Bad(array.name, absl::StrFormat("dtype %s is not an integer type", d.descr));
  }
  std::vector<int32_t> out(array.header.elements);
  absl::Status status;
  switch (d.size) {
    case 1:
      status = IntsToInt32<uint8_t>(array, out);
      break;
    case 2:
      status = IntsToInt32<uint16_t>(array, out);
      break;
    case 4:
      status = IntsToInt32<uint32_t>(array, out);
      break;
    default:
      status = IntsToInt32<uint64_t>(array, out);
      break;
  }
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<std::vector<float>> NpyToFloat32(const NpyArray& array) {
  const NpyDtype& d = array.header.dtype;
  if (d.kind != 'f') {
    return Bad(array.name, absl::StrFormat("dtype %s is not a float type", d.descr));
  }
  std::vector<float> out(array.header.elements);
  const char* data = array.data().data();
  for (uint64_t i = 0; i < out.size(); ++i) {
    if (d.size == 2) {
      out[i] = HalfToFloat(Load<uint16_t>(data, i, d.big_endian));
    } else if (d.size == 4) {
      out[i] = std::bit_cast<float>(Load<uint32_t>(data, i, d.big_endian));
    } else {
      out[i] = DoubleToFloat(std::bit_cast<double>(Load<uint64_t>(data, i, d.big_endian)));
    }
  }
  return out;
}

}  // namespace moe_router
