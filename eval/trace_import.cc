#include "eval/trace_import.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/file_io.h"
#include "core/base/json_number.h"
#include "eval/npy.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace {

using nlohmann::json;

absl::Status Bad(absl::string_view where, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", why));
}

// "dir/requests.npz" -> "requests".
std::string Stem(const std::string& path) {
  std::string base = path.substr(path.find_last_of('/') + 1);
  const size_t dot = base.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
}

// A dimension of an array as uint32, or an error naming it.
absl::StatusOr<uint32_t> Dimension(uint64_t dim, absl::string_view what, absl::string_view where) {
  if (dim == 0 || dim > std::numeric_limits<uint32_t>::max()) {
    return Bad(where, absl::StrFormat("%s is %d; it must be from 1 to 2^32-1", what, dim));
  }
  return static_cast<uint32_t>(dim);
}

// A JSON string literal. File and archive member names need not be UTF-8:
// invalid bytes become U+FFFD (where dump() would throw), on writing and in
// RunName alike, so the names still match.
std::string JsonString(absl::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

// A flag the user gave must agree with the input.
absl::Status CheckFlag(uint32_t flag, uint32_t found, absl::string_view name,
                       absl::string_view where) {
  if (flag == 0 || flag == found) return absl::OkStatus();
  const absl::string_view what = name == "num-layers" ? "layers"
                                 : name == "top-k"    ? "experts per token"
                                                      : "experts";
  return Bad(where, absl::StrFormat("the input has %d %s, --%s says %d", found, what, name, flag));
}

absl::StatusOr<RoutedRequest> RoutedFromArray(const NpyArray& array, std::string source,
                                              std::string id, const ImportOptions& options) {
  const std::vector<uint64_t>& shape = array.header.shape;
  if (shape.size() != 3) {
    return Bad(array.name,
               absl::StrFormat("shape %s is not (tokens, layers, top_k)", ShapeText(shape)));
  }
  RoutedRequest r;
  r.source = std::move(source);
  r.id = std::move(id);
  absl::StatusOr<uint32_t> tokens = Dimension(shape[0], "the token count", array.name);
  absl::StatusOr<uint32_t> layers = Dimension(shape[1], "the layer count", array.name);
  absl::StatusOr<uint32_t> top_k = Dimension(shape[2], "top_k", array.name);
  for (const auto* dim : {&tokens, &layers, &top_k}) {
    if (!dim->ok()) return dim->status();
  }
  r.tokens = *tokens;
  r.layers = *layers;
  r.top_k = *top_k;
  if (absl::Status s = CheckFlag(options.num_layers, r.layers, "num-layers", array.name); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckFlag(options.top_k, r.top_k, "top-k", array.name); !s.ok()) return s;
  absl::StatusOr<std::vector<int32_t>> ids = NpyToInt32(array);
  if (!ids.ok()) return ids.status();
  r.ids = *std::move(ids);
  return r;
}

}  // namespace

std::string RunName(absl::string_view source, absl::string_view id) {
  return absl::StrCat(JsonString(source), "/", JsonString(id));
}

absl::StatusOr<std::vector<RoutedRequest>> ReadVllmRouting(const std::string& path,
                                                           const ImportOptions& options) {
  std::vector<RoutedRequest> out;
  if (!IsNpzPath(path)) {
    absl::StatusOr<NpyArray> array = ReadNpyFile(path);
    if (!array.ok()) return array.status();
    absl::StatusOr<RoutedRequest> r = RoutedFromArray(*array, Stem(path), Stem(path), options);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
    return out;
  }
  absl::StatusOr<std::vector<NpyArray>> arrays = ReadNpz(path);
  if (!arrays.ok()) return arrays.status();
  for (NpyArray& array : *arrays) {
    std::string id = array.name;
    array.name = absl::StrCat(path, ":", id);
    absl::StatusOr<RoutedRequest> r = RoutedFromArray(array, Stem(path), std::move(id), options);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

namespace {

// What one SGLang response says about one request.
struct SglangFields {
  std::string id;
  const json* routed = nullptr;
  int64_t prompt_tokens = -1, completion_tokens = -1;
};

const json* Field(const json& object, std::initializer_list<const char*> path) {
  const json* at = &object;
  for (const char* key : path) {
    if (!at->is_object()) return nullptr;
    const auto it = at->find(key);
    if (it == at->end()) return nullptr;
    at = &*it;
  }
  return at;
}

int64_t Count(const json* j) {
  if (j == nullptr) return -1;
  absl::StatusOr<uint32_t> v = JsonInteger<uint32_t>(*j, "a token count");
  return v.ok() ? *v : -1;
}

std::string IdText(const json* id, absl::string_view fallback) {
  if (id == nullptr) return std::string(fallback);
  return id->is_string() ? id->get<std::string>() : id->dump();
}

// The requests of one response object: a choice each, or its meta_info.
absl::StatusOr<std::vector<SglangFields>> SglangResponseFields(const json& response,
                                                               absl::string_view where,
                                                               absl::string_view fallback_id) {
  if (!response.is_object()) return Bad(where, "a response is not a JSON object");
  std::vector<SglangFields> out;
  if (const json* meta = Field(response, {"meta_info"})) {
    SglangFields f;
    f.id = IdText(Field(*meta, {"id"}), fallback_id);
    f.routed = Field(*meta, {"routed_experts"});
    f.prompt_tokens = Count(Field(*meta, {"prompt_tokens"}));
    f.completion_tokens = Count(Field(*meta, {"completion_tokens"}));
    out.push_back(f);
  } else {
    const json* choices = Field(response, {"choices"});
    if (choices == nullptr || !choices->is_array() || choices->empty()) {
      return Bad(where,
                 "neither 'choices' (an OpenAI-compatible response) nor 'meta_info' (a "
                 "native /generate response)");
    }
    const std::string id = IdText(Field(response, {"id"}), fallback_id);
    for (size_t i = 0; i < choices->size(); ++i) {
      const json& choice = (*choices)[i];
      SglangFields f;
      f.id = choices->size() == 1 ? id : absl::StrCat(id, "/", i);
      for (const char* ext : {"sgl_ext", "sglext"}) {
        if (f.routed == nullptr) f.routed = Field(choice, {ext, "routed_experts"});
        // Some versions put the extension on the response, for its one choice.
        if (f.routed == nullptr && choices->size() == 1) {
          f.routed = Field(response, {ext, "routed_experts"});
        }
      }
      f.prompt_tokens = Count(Field(response, {"usage", "prompt_tokens"}));
      // usage sums every choice's completion; only one choice's is its own.
      if (choices->size() == 1) {
        f.completion_tokens = Count(Field(response, {"usage", "completion_tokens"}));
      }
      out.push_back(f);
    }
  }
  for (const SglangFields& f : out) {
    if (f.routed == nullptr || f.routed->is_null()) {
      return Bad(where, absl::StrFormat("request '%s' has no routed_experts (sgl_ext.routed_experts"
                                        " or meta_info.routed_experts): was it sent with "
                                        "return_routed_experts?",
                                        f.id));
    }
  }
  return out;
}

// base64 of little-endian int32 ids, shaped by the flags (or, with only
// --top-k, by the token counts the response gives).
absl::Status DecodeFlatIds(const SglangFields& f, absl::string_view where,
                           const ImportOptions& options, RoutedRequest& r) {
  std::string bytes;
  if (!absl::Base64Unescape(f.routed->get_ref<const std::string&>(), &bytes)) {
    return Bad(where, "routed_experts is not valid base64");
  }
  if (bytes.size() % 4 != 0) {
    return Bad(where, absl::StrFormat("routed_experts decodes to %d bytes, not whole int32 ids",
                                      bytes.size()));
  }
  const uint64_t n = bytes.size() / 4;
  if (options.top_k == 0) {
    return Bad(where, "routed_experts is flat int32: give --top-k (and --num-layers) to shape it");
  }
  uint64_t layers = options.num_layers;
  if (layers == 0 && f.prompt_tokens > 0 && f.completion_tokens >= 0) {
    // The rows are prompt + completion tokens, less the last generated one
    // or not: a layer count only when exactly one of the two fits.
    uint64_t fits = 0;
    for (int64_t t :
         {f.prompt_tokens + f.completion_tokens - 1, f.prompt_tokens + f.completion_tokens}) {
      if (t > 0 && n % (uint64_t{options.top_k} * t) == 0) {
        layers = n / (uint64_t{options.top_k} * t);
        ++fits;
      }
    }
    if (fits != 1) layers = 0;
  }
  if (layers == 0) {
    return Bad(where,
               "cannot tell the layer count from the response's token counts: give --num-layers");
  }
  const uint64_t per_token = layers * options.top_k;
  if (n == 0 || n % per_token != 0) {
    return Bad(where, absl::StrFormat("routed_experts holds %d ids, not whole tokens of %d layers x"
                                      " top-%d (--num-layers, --top-k)",
                                      n, layers, options.top_k));
  }
  absl::StatusOr<uint32_t> tokens = Dimension(n / per_token, "the token count", where);
  if (!tokens.ok()) return tokens.status();
  r.tokens = *tokens;
  r.layers = static_cast<uint32_t>(layers);
  r.top_k = options.top_k;
  r.ids.resize(n);
  std::memcpy(r.ids.data(), bytes.data(), bytes.size());  // little-endian host (npy.cc)
  return absl::OkStatus();
}

// A nested [tokens][layers][top_k] list, shaped by itself.
absl::Status DecodeNestedIds(const json& routed, absl::string_view where,
                             const ImportOptions& options, RoutedRequest& r) {
  const auto rows = [&](const json& j, absl::string_view what) -> absl::StatusOr<uint32_t> {
    if (!j.is_array() || j.empty()) return Bad(where, absl::StrCat(what, " is not a list"));
    return Dimension(j.size(), what, where);
  };
  absl::StatusOr<uint32_t> tokens = rows(routed, "routed_experts");
  if (!tokens.ok()) return tokens.status();
  absl::StatusOr<uint32_t> layers = rows(routed[0], "a token's routed_experts");
  if (!layers.ok()) return layers.status();
  absl::StatusOr<uint32_t> top_k = rows(routed[0][0], "a layer's routed_experts");
  if (!top_k.ok()) return top_k.status();
  r.tokens = *tokens;
  r.layers = *layers;
  r.top_k = *top_k;
  if (absl::Status s = CheckFlag(options.num_layers, r.layers, "num-layers", where); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckFlag(options.top_k, r.top_k, "top-k", where); !s.ok()) return s;
  for (uint32_t t = 0; t < r.tokens; ++t) {
    if (!routed[t].is_array() || routed[t].size() != r.layers) {
      return Bad(where, absl::StrFormat("token %d does not have %d layers", t, r.layers));
    }
    for (uint32_t l = 0; l < r.layers; ++l) {
      const std::string what = absl::StrFormat("token %d layer %d's experts", t, l);
      if (!routed[t][l].is_array() || routed[t][l].size() != r.top_k) {
        return Bad(where, absl::StrFormat("%s are not %d ids", what, r.top_k));
      }
      absl::StatusOr<std::vector<int32_t>> ids = JsonIntegers<int32_t>(routed[t][l], what);
      if (!ids.ok()) return Bad(where, ids.status().message());
      r.ids.insert(r.ids.end(), ids->begin(), ids->end());
    }
  }
  return absl::OkStatus();
}

// Where the prompt ends: only when the rows are every token the engine
// computed (prompt + completion, without or with the last generated one).
int64_t PromptBoundary(const SglangFields& f, uint32_t rows) {
  if (f.prompt_tokens < 0 || rows < f.prompt_tokens) return -1;
  if (f.completion_tokens < 0) return f.prompt_tokens;
  const int64_t all = f.prompt_tokens + f.completion_tokens;
  return rows == all - 1 || rows == all ? f.prompt_tokens : -1;
}

}  // namespace

absl::StatusOr<std::vector<RoutedRequest>> ParseSglangLine(absl::string_view line,
                                                           absl::string_view where,
                                                           absl::string_view source,
                                                           const ImportOptions& options) {
  const json parsed = json::parse(line.begin(), line.end(), nullptr, false);
  if (parsed.is_discarded()) return Bad(where, "not JSON");
  const std::vector<json> responses =
      parsed.is_array() ? parsed.get<std::vector<json>>() : std::vector<json>{parsed};
  std::vector<RoutedRequest> out;
  for (size_t i = 0; i < responses.size(); ++i) {
    const std::string fallback =
        responses.size() == 1 ? std::string(where) : absl::StrCat(where, "/", i);
    absl::StatusOr<std::vector<SglangFields>> fields =
        SglangResponseFields(responses[i], where, fallback);
    if (!fields.ok()) return fields.status();
    for (const SglangFields& f : *fields) {
      const std::string at = absl::StrFormat("%s (request '%s')", where, f.id);
      RoutedRequest r;
      r.source = std::string(source);
      r.id = f.id;
      absl::Status decoded;
      if (f.routed->is_string()) {
        decoded = DecodeFlatIds(f, at, options, r);
      } else if (f.routed->is_array()) {
        decoded = DecodeNestedIds(*f.routed, at, options, r);
      } else {
        decoded = Bad(at, "routed_experts is neither a base64 string nor a list");
      }
      if (!decoded.ok()) return decoded;
      r.prompt_tokens = PromptBoundary(f, r.tokens);
      out.push_back(std::move(r));
    }
  }
  return out;
}

absl::StatusOr<std::vector<RoutedRequest>> ReadSglangRouting(
    const std::string& path, const ImportOptions& options,
    const std::function<void(uint64_t)>& bytes_read) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("cannot open", path);
  std::vector<RoutedRequest> out;
  std::string line;
  uint64_t bytes = 0;
  for (uint64_t line_no = 1; std::getline(in, line); ++line_no) {
    bytes += line.size() + 1;
    if (bytes_read) bytes_read(bytes);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    absl::StatusOr<std::vector<RoutedRequest>> requests =
        ParseSglangLine(line, absl::StrCat(path, ":", line_no), Stem(path), options);
    if (!requests.ok()) return requests.status();
    for (RoutedRequest& r : *requests) out.push_back(std::move(r));
  }
  if (in.bad()) return ErrnoError("cannot read", path);
  if (out.empty()) return Bad(path, "no responses");
  return out;
}

namespace {

// The dump's layers the trace keeps: from first_moe_layer on, without the
// empty (dense) ones when drop_empty_layers.
absl::StatusOr<std::vector<uint32_t>> KeptLayers(uint32_t dump_layers, const ImportOptions& options,
                                                 const std::function<bool(uint32_t)>& is_empty,
                                                 std::vector<std::string>& notes) {
  if (options.first_moe_layer >= dump_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--first-moe-layer %d leaves none of the input's %d layers",
                        options.first_moe_layer, dump_layers));
  }
  std::vector<uint32_t> kept, empty;
  for (uint32_t l = options.first_moe_layer; l < dump_layers; ++l) {
    if (options.drop_empty_layers && is_empty(l)) {
      empty.push_back(l);
    } else {
      kept.push_back(l);
    }
  }
  if (options.first_moe_layer > 0) {
    notes.push_back(
        absl::StrFormat("layers 0 to %d of the input are dense (--first-moe-layer): "
                        "dropped",
                        options.first_moe_layer - 1));
  }
  if (!empty.empty()) {
    notes.push_back(absl::StrFormat(
        "input layer%s %s hold%s no routing in any request (dense): "
        "dropped (--dense-layers none keeps them)",
        empty.size() > 1 ? "s" : "", absl::StrJoin(empty, ","), empty.size() > 1 ? "" : "s"));
  }
  if (kept.empty()) {
    return absl::InvalidArgumentError("every layer of the input is empty: no routing to import");
  }
  return kept;
}

// A row the engine did not route: all -1, or (top_k > 1) all 0.
bool Unrouted(absl::Span<const int32_t> row) {
  const bool all_minus_one = std::all_of(row.begin(), row.end(), [](int32_t v) { return v == -1; });
  const bool all_zero = std::all_of(row.begin(), row.end(), [](int32_t v) { return v == 0; });
  return all_minus_one || (all_zero && row.size() > 1);
}

// What is wrong with a routed row, or "" (the common case, so no string is
// built for it).
std::string RowError(absl::Span<const int32_t> row, uint32_t num_experts) {
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] < 0 || static_cast<uint32_t>(row[i]) >= num_experts) {
      return absl::StrFormat("expert id %d is out of range (the model has %d experts%s)", row[i],
                             num_experts, row[i] < 0 ? "; -1 marks a slot no expert took" : "");
    }
    for (size_t j = 0; j < i; ++j) {
      if (row[j] == row[i]) return absl::StrFormat("expert %d appears twice", row[i]);
    }
  }
  return "";
}

// The shape every request must share, and the trace's expert count.
absl::Status CheckRoutedShapes(const std::vector<RoutedRequest>& requests,
                               const ImportOptions& options, const std::vector<uint32_t>& kept,
                               uint32_t& num_experts) {
  int32_t max_id = -1;
  for (const RoutedRequest& r : requests) {
    const std::string name = RunName(r.source, r.id);
    if (r.layers != requests[0].layers || r.top_k != requests[0].top_k) {
      return Bad(name,
                 absl::StrFormat("%d layers x top-%d where request %s has %d x top-%d", r.layers,
                                 r.top_k, RunName(requests[0].source, requests[0].id),
                                 requests[0].layers, requests[0].top_k));
    }
    for (uint32_t l : kept) {
      for (uint32_t t = 0; t < r.tokens; ++t) {
        const size_t at = (uint64_t{t} * r.layers + l) * r.top_k;
        for (uint32_t k = 0; k < r.top_k; ++k) max_id = std::max(max_id, r.ids[at + k]);
      }
    }
  }
  num_experts = options.num_experts != 0 ? options.num_experts : static_cast<uint32_t>(max_id + 1);
  if (num_experts < requests[0].top_k) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d experts cannot give top-%d routing", num_experts, requests[0].top_k));
  }
  return absl::OkStatus();
}

absl::StatusOr<RoutingTrace::Run> RoutedRun(const RoutedRequest& r,
                                            const std::vector<uint32_t>& kept, uint32_t num_experts,
                                            const ImportOptions& options, uint64_t& unrouted) {
  const std::string name = RunName(r.source, r.id);
  uint32_t first = 0, end = r.tokens;
  if (options.tokens != ImportOptions::Tokens::kAll) {
    if (r.prompt_tokens < 0) {
      return Bad(name, "the input does not say where its prompt ends: import with --tokens all");
    }
    const uint32_t boundary = static_cast<uint32_t>(std::min<int64_t>(r.prompt_tokens, r.tokens));
    (options.tokens == ImportOptions::Tokens::kPrompt ? end : first) = boundary;
  }
  RoutingTrace::Run run;
  run.name = name;
  run.steps.reserve(uint64_t{end - first} * kept.size());
  run.experts.reserve(run.steps.capacity() * r.top_k);
  for (uint32_t t = first; t < end; ++t) {
    for (uint32_t i = 0; i < kept.size(); ++i) {
      const auto row =
          absl::MakeConstSpan(r.ids).subspan((uint64_t{t} * r.layers + kept[i]) * r.top_k, r.top_k);
      if (Unrouted(row)) {
        ++unrouted;
        continue;
      }
      if (const std::string error = RowError(row, num_experts); !error.empty()) {
        return Bad(absl::StrFormat("%s token %d layer %d (input layer %d)", name, t, i, kept[i]),
                   error);
      }
      run.steps.push_back({t - first, i});
      run.experts.insert(run.experts.end(), row.begin(), row.end());
      run.tokens = t - first + 1;
    }
  }
  if (run.steps.empty()) return Bad(name, "no routed tokens in the kept layers");
  return run;
}

}  // namespace

absl::StatusOr<ImportedTrace> BuildRoutedTrace(const std::vector<RoutedRequest>& requests,
                                               const ImportOptions& options) {
  if (requests.empty()) return absl::InvalidArgumentError("no requests to import");
  ImportedTrace out;
  out.dump_layers = requests[0].layers;
  const auto is_empty = [&](uint32_t l) {
    for (const RoutedRequest& r : requests) {
      if (l >= r.layers) continue;  // a shape mismatch, refused below
      for (uint32_t t = 0; t < r.tokens; ++t) {
        const size_t at = (uint64_t{t} * r.layers + l) * r.top_k;
        for (uint32_t k = 0; k < r.top_k; ++k) {
          if (r.ids[at + k] != 0 && r.ids[at + k] != -1) return false;
        }
      }
    }
    return true;
  };
  absl::StatusOr<std::vector<uint32_t>> kept =
      KeptLayers(out.dump_layers, options, is_empty, out.notes);
  if (!kept.ok()) return kept.status();
  out.source_layers = *kept;
  uint32_t num_experts = 0;
  if (absl::Status s = CheckRoutedShapes(requests, options, *kept, num_experts); !s.ok()) return s;
  RoutingTrace& trace = out.trace;
  trace.num_layers = static_cast<uint32_t>(kept->size());
  trace.num_experts = num_experts;
  trace.top_k = requests[0].top_k;
  uint64_t unknown_boundary = 0;
  for (const RoutedRequest& r : requests) {
    absl::StatusOr<RoutingTrace::Run> run =
        RoutedRun(r, *kept, num_experts, options, out.unrouted_rows);
    if (!run.ok()) return run.status();
    trace.runs.push_back(*std::move(run));
    int64_t prompt = r.prompt_tokens;  // --tokens prompt: all of them; generated: none
    if (options.tokens == ImportOptions::Tokens::kPrompt) prompt = trace.runs.back().tokens;
    if (options.tokens == ImportOptions::Tokens::kGenerated) prompt = 0;
    out.origins.push_back({r.source, r.id, prompt});
    unknown_boundary += r.prompt_tokens < 0;
  }
  if (unknown_boundary > 0) {
    out.notes.push_back(absl::StrFormat(
        "%d of %d requests do not say where their prompt ends, so their lines have no 'phase' "
        "(vLLM's arrays never say; an SGLang response says with usage.prompt_tokens when its "
        "rows are prompt + completion [- 1])",
        unknown_boundary, requests.size()));
  }
  if (out.unrouted_rows > 0) {
    out.notes.push_back(
        absl::StrFormat("%d rows in MoE layers were not routed by the engine (all "
                        "-1 or all 0, such as prefix-cache hits): missing steps",
                        out.unrouted_rows));
  }
  if (options.num_experts == 0) {
    out.notes.push_back(
        absl::StrFormat("the model's expert count is taken as %d, the largest id + "
                        "1 (--num-experts gives it)",
                        num_experts));
  }
  return out;
}

namespace {

// One request from per-layer arrays: (tokens, experts) each, or one
// (layers, tokens, experts) array.
absl::StatusOr<LogitsRequest> LogitsFromArrays(const std::vector<const NpyArray*>& arrays,
                                               std::string source, std::string id,
                                               const ImportOptions& options) {
  LogitsRequest r;
  r.source = std::move(source);
  r.id = std::move(id);
  const bool stacked = arrays.size() == 1 && arrays[0]->header.shape.size() == 3;
  for (const NpyArray* a : arrays) {
    const std::vector<uint64_t>& shape = a->header.shape;
    if (shape.size() != (stacked ? 3u : 2u)) {
      return Bad(a->name, absl::StrFormat("shape %s is not %s", ShapeText(shape),
                                          stacked ? "(layers, tokens, num_experts)"
                                                  : "one layer's (tokens, num_experts)"));
    }
    absl::StatusOr<uint32_t> tokens =
        Dimension(shape[shape.size() - 2], "the token count", a->name);
    absl::StatusOr<uint32_t> experts = Dimension(shape.back(), "the expert count", a->name);
    if (!tokens.ok()) return tokens.status();
    if (!experts.ok()) return experts.status();
    if (a != arrays[0] && (*tokens != r.tokens || *experts != r.num_experts)) {
      return Bad(a->name,
                 absl::StrFormat("%d tokens x %d experts where the first layer has %d x %d",
                                 *tokens, *experts, r.tokens, r.num_experts));
    }
    r.tokens = *tokens;
    r.num_experts = *experts;
    absl::StatusOr<std::vector<float>> logits = NpyToFloat32(*a);
    if (!logits.ok()) return logits.status();
    r.logits.insert(r.logits.end(), logits->begin(), logits->end());
  }
  absl::StatusOr<uint32_t> layers = Dimension(stacked ? arrays[0]->header.shape[0] : arrays.size(),
                                              "the layer count", arrays[0]->name);
  if (!layers.ok()) return layers.status();
  r.layers = *layers;
  const std::string& where = arrays[0]->name;
  if (absl::Status s = CheckFlag(options.num_layers, r.layers, "num-layers", where); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckFlag(options.num_experts, r.num_experts, "num-experts", where);
      !s.ok()) {
    return s;
  }
  return r;
}

}  // namespace

absl::StatusOr<std::vector<LogitsRequest>> ReadTransformersLogits(const std::string& path,
                                                                  const ImportOptions& options) {
  std::vector<LogitsRequest> out;
  if (!IsNpzPath(path)) {
    absl::StatusOr<NpyArray> array = ReadNpyFile(path);
    if (!array.ok()) return array.status();
    if (array->header.shape.size() != 3) {
      return Bad(path, absl::StrFormat("shape %s is not (layers, tokens, num_experts); save the "
                                       "per-layer list with numpy.savez(path, *router_logits)",
                                       ShapeText(array->header.shape)));
    }
    absl::StatusOr<LogitsRequest> r = LogitsFromArrays({&*array}, Stem(path), Stem(path), options);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
    return out;
  }
  absl::StatusOr<std::vector<NpyArray>> arrays = ReadNpz(path);
  if (!arrays.ok()) return arrays.status();
  for (NpyArray& a : *arrays) a.name = absl::StrCat(path, ":", a.name);
  const size_t rank = (*arrays)[0].header.shape.size();
  if (rank == 2) {  // numpy.savez(path, *router_logits): one request, a layer per array
    std::vector<const NpyArray*> layers;
    for (const NpyArray& a : *arrays) layers.push_back(&a);
    absl::StatusOr<LogitsRequest> r = LogitsFromArrays(layers, Stem(path), Stem(path), options);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
    return out;
  }
  for (const NpyArray& a : *arrays) {  // a request per (layers, tokens, experts) array
    if (a.header.shape.size() != 3) {
      return Bad(a.name, absl::StrFormat("shape %s: an archive holds either per-layer (tokens, "
                                         "num_experts) arrays or per-request (layers, tokens, "
                                         "num_experts) ones",
                                         ShapeText(a.header.shape)));
    }
    absl::StatusOr<LogitsRequest> r =
        LogitsFromArrays({&a}, Stem(path), a.name.substr(path.size() + 1), options);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

absl::StatusOr<ImportedTrace> BuildLogitsTrace(const std::vector<LogitsRequest>& requests,
                                               const ImportOptions& options) {
  if (requests.empty()) return absl::InvalidArgumentError("no requests to import");
  const LogitsRequest& first = requests[0];
  if (options.tokens != ImportOptions::Tokens::kAll) {
    return absl::InvalidArgumentError(
        "router logits do not say where a prompt ends: import them with --tokens all");
  }
  if (options.top_k == 0 || options.top_k > first.num_experts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router logits do not say how many experts a token takes: give --top-k from 1 to %d",
        first.num_experts));
  }
  for (const LogitsRequest& r : requests) {
    if (r.layers != first.layers || r.num_experts != first.num_experts) {
      return Bad(
          RunName(r.source, r.id),
          absl::StrFormat("%d layers x %d experts where %s has %d x %d", r.layers, r.num_experts,
                          RunName(first.source, first.id), first.layers, first.num_experts));
    }
  }
  const uint32_t e = first.num_experts;
  const auto layer_logits = [&](const LogitsRequest& r, uint32_t l, uint32_t t) {
    return absl::MakeConstSpan(r.logits).subspan((uint64_t{l} * r.tokens + t) * e, e);
  };
  ImportedTrace out;
  out.dump_layers = first.layers;
  const auto is_empty = [&](uint32_t l) {
    for (const LogitsRequest& r : requests) {
      for (uint32_t t = 0; t < r.tokens; ++t) {
        for (float v : layer_logits(r, l, t)) {
          if (v != 0) return false;
        }
      }
    }
    return true;
  };
  absl::StatusOr<std::vector<uint32_t>> kept =
      KeptLayers(first.layers, options, is_empty, out.notes);
  if (!kept.ok()) return kept.status();
  out.source_layers = *kept;
  RoutingTrace& trace = out.trace;
  trace.num_layers = static_cast<uint32_t>(kept->size());
  trace.num_experts = e;
  trace.top_k = options.top_k;
  trace.rule = options.rule;
  if (absl::Status s = options.rule.Validate(e, options.top_k); !s.ok()) return s;
  if (absl::Status s = ValidateChoiceBias(options.rule, options.choice_bias, first.layers, e);
      !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the dump's ", first.layers, " layers: ", s.message()));
  }
  for (uint32_t source : *kept) {
    if (options.choice_bias.empty()) break;
    const auto row = absl::MakeConstSpan(options.choice_bias).subspan(size_t{source} * e, e);
    trace.choice_bias.insert(trace.choice_bias.end(), row.begin(), row.end());
  }
  for (const LogitsRequest& r : requests) {
    RoutingTrace::Run run;
    run.name = RunName(r.source, r.id);
    run.tokens = r.tokens;
    for (uint32_t t = 0; t < r.tokens; ++t) {
      for (uint32_t i = 0; i < kept->size(); ++i) {
        const auto logits = layer_logits(r, (*kept)[i], t);
        for (uint32_t x = 0; x < e; ++x) {
          if (!std::isfinite(logits[x])) {
            return Bad(run.name, absl::StrFormat("token %d layer %d (input layer %d): the logit "
                                                 "of expert %d is %f",
                                                 t, i, (*kept)[i], x, logits[x]));
          }
        }
        run.steps.push_back({t, i});
        run.logits.insert(run.logits.end(), logits.begin(), logits.end());
      }
    }
    trace.runs.push_back(std::move(run));
    out.origins.push_back({r.source, r.id, -1});
  }
  if (absl::Status s = FillTopKFromLogits(trace); !s.ok()) return s;
  return out;
}

namespace {

// Millions of lines: formatted straight into a buffer with std::to_chars
// and written to the file a megabyte at a time, so the trace is never held
// whole as text.
class LineWriter {
 public:
  explicit LineWriter(AtomicFileWriter& file) : file_(file) {}
  // Room for `n` more bytes.
  absl::Status Reserve(size_t n) {
    if (end_ + n > buf_.size()) {
      if (absl::Status s = Flush(); !s.ok()) return s;
    }
    if (n > buf_.size()) buf_.resize(n);
    return absl::OkStatus();
  }
  void Text(absl::string_view s) {
    std::memcpy(buf_.data() + end_, s.data(), s.size());
    end_ += s.size();
  }
  void Number(uint32_t v) {
    end_ = std::to_chars(buf_.data() + end_, buf_.data() + buf_.size(), v).ptr - buf_.data();
  }
  absl::Status Flush() {
    const size_t n = end_;
    end_ = 0;
    return file_.Append(absl::string_view(buf_.data(), n));
  }

 private:
  AtomicFileWriter& file_;
  std::vector<char> buf_ = std::vector<char>(1 << 20);
  size_t end_ = 0;
};

}  // namespace

absl::Status WriteRoutingJsonl(const std::string& path, const ImportedTrace& imported) {
  const RoutingTrace& trace = imported.trace;
  absl::StatusOr<AtomicFileWriter> file = AtomicFileWriter::Create(path);
  if (!file.ok()) return file.status();
  LineWriter w(*file);
  for (size_t r = 0; r < trace.runs.size(); ++r) {
    const RoutingTrace::Run& run = trace.runs[r];
    const ImportedTrace::Origin& origin = imported.origins[r];
    const std::string prefix = absl::StrCat("{\"dataset\":", JsonString(origin.source),
                                            ",\"problem_id\":", JsonString(origin.id),
                                            ",\"num_experts\":", trace.num_experts, ",\"layer\":");
    const int64_t prompt = origin.prompt_tokens;
    // The prefix, the numbers (10 digits at most) and the longest tail.
    const size_t longest = prefix.size() + 11 * (2 + trace.top_k) + 48;
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const RoutingTrace::Step step = run.steps[i];
      if (absl::Status s = w.Reserve(longest); !s.ok()) return s;
      w.Text(prefix);
      w.Number(step.layer);
      w.Text(",\"token_idx\":");
      w.Number(step.token);
      w.Text(",\"experts\":[");
      const auto experts = trace.StepExperts(run, i);
      for (size_t k = 0; k < experts.size(); ++k) {
        if (k > 0) w.Text(",");
        w.Number(experts[k]);
      }
      w.Text(prompt < 0            ? "]}\n"
             : step.token < prompt ? "],\"phase\":\"prompt\"}\n"
                                   : "],\"phase\":\"generated\"}\n");
    }
  }
  if (absl::Status s = w.Flush(); !s.ok()) return s;
  return file->Commit();
}

}  // namespace moe_router
