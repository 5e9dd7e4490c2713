#ifndef MOE_ROUTER_EVAL_TRACE_IMPORT_H_
#define MOE_ROUTER_EVAL_TRACE_IMPORT_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "eval/trace.h"

namespace moe_router {

/// Importing the routing inference engines record into our traces:
/// - vLLM (enable_return_routed_experts): per request a (tokens, layers,
///   top_k) integer array, saved as .npy (one request) or .npz (one request
///   per array);
/// - SGLang (--enable-return-routed-experts): JSONL of its responses, each
///   choice's sgl_ext.routed_experts base64 of little-endian int32, logical
///   shape [tokens, layers, top_k];
/// - Transformers (output_router_logits=True): per-layer router logits saved
///   with numpy, into a logits trace.
///
/// Layers. Engines record every layer of the model, dense ones included
/// (vLLM and SGLang leave those rows 0, SGLang-JAX writes -1). The trace
/// keeps only MoE layers, renumbered from 0: the dump's layers below
/// `first_moe_layer` are dropped, and with `drop_empty_layers` so is every
/// layer whose rows are all 0 or -1 in every request. In a kept layer, a row
/// of all -1 (or, with top_k > 1, all 0: a token the engine did not route,
/// such as a prefix-cache hit) is a missing step; any other row must be
/// top_k distinct ids in [0, num_experts).
struct ImportOptions {
  /// The dump's layer count (every layer, dense ones too); 0: as the input
  /// says. Required to shape SGLang's flat ids unless the response's token
  /// counts decide it.
  uint32_t num_layers = 0;
  /// Experts per token; 0: as the input says. Required for SGLang's flat
  /// ids and for Transformers' logits (which do not say).
  uint32_t top_k = 0;
  /// The model's experts per layer; 0: the largest id + 1 (routing) or the
  /// logits' last axis.
  uint32_t num_experts = 0;
  uint32_t first_moe_layer = 0;
  bool drop_empty_layers = true;
  /// Which of a request's tokens to import: all, the prompt's or the
  /// generated ones (renumbered from 0). prompt/generated need the input to
  /// say where the prompt ends.
  enum class Tokens { kAll, kPrompt, kGenerated };
  Tokens tokens = Tokens::kAll;
  /// Logits dumps: the model's routing rule, which makes each step's
  /// experts from its logits, and its choice biases for every layer of the
  /// dump (dump layers x num_experts, dense layers included; the kept
  /// layers' rows go into the trace). Routing dumps record the choice
  /// itself.
  RoutingRule rule = {};
  std::vector<float> choice_bias;
};

/// One request's routing as the engine recorded it.
struct RoutedRequest {
  std::string source;  // the input file's name without its directory and extension
  std::string id;      // the request id (file stem, array name, response id)
  uint32_t tokens = 0, layers = 0, top_k = 0;
  std::vector<int32_t> ids;  // tokens x layers x top_k
  /// How many of the first tokens are the prompt's; -1: the input does not
  /// say.
  int64_t prompt_tokens = -1;
};

/// One request's router logits: layers x tokens x num_experts.
struct LogitsRequest {
  std::string source, id;
  uint32_t layers = 0, tokens = 0, num_experts = 0;
  std::vector<float> logits;
};

/// A trace built from an engine's dump, and how it was mapped.
struct ImportedTrace {
  RoutingTrace trace;
  /// Per run: where it came from, and its prompt's token count (-1 when
  /// the input does not say).
  struct Origin {
    std::string source, id;
    int64_t prompt_tokens = -1;
  };
  std::vector<Origin> origins;
  uint32_t dump_layers = 0;
  /// The dump's layer of each of the trace's layers.
  std::vector<uint32_t> source_layers;
  /// Rows in kept layers the engine did not route (missing steps).
  uint64_t unrouted_rows = 0;
  /// What the user should know about the mapping, one sentence each.
  std::vector<std::string> notes;
};

/// The requests of one vLLM .npy or .npz file.
absl::StatusOr<std::vector<RoutedRequest>> ReadVllmRouting(const std::string& path,
                                                           const ImportOptions& options);
/// The requests of one JSONL line of SGLang responses: an OpenAI-compatible
/// chat or completions response (routed experts in each choice's sgl_ext,
/// or the response's sglext when it has one choice; the prompt's length in
/// usage.prompt_tokens), or a native /generate response (an object or a
/// list of them, everything in meta_info). `where` (file:line) starts every
/// error. The prompt ends where prompt_tokens says when the row count is
/// prompt + completion - 1 or prompt + completion (the engine routes every
/// token it computed); otherwise the boundary is unknown (-1).
absl::StatusOr<std::vector<RoutedRequest>> ParseSglangLine(absl::string_view line,
                                                           absl::string_view where,
                                                           absl::string_view source,
                                                           const ImportOptions& options);
/// Every line of an SGLang responses file; `bytes_read`, if given, is told
/// how far into the file it is after each line (one file can be gigabytes).
absl::StatusOr<std::vector<RoutedRequest>> ReadSglangRouting(
    const std::string& path, const ImportOptions& options,
    const std::function<void(uint64_t)>& bytes_read = nullptr);
/// The requests of one Transformers logits file: an .npy of (layers,
/// tokens, num_experts), an .npz of per-layer (tokens, num_experts) arrays
/// (numpy.savez(path, *router_logits): one request), or an .npz of 3-D
/// arrays (one request each).
absl::StatusOr<std::vector<LogitsRequest>> ReadTransformersLogits(const std::string& path,
                                                                  const ImportOptions& options);

/// The trace of routed requests: layers mapped, rows checked (an error
/// names the request, token, layer and what is wrong), tokens selected.
absl::StatusOr<ImportedTrace> BuildRoutedTrace(const std::vector<RoutedRequest>& requests,
                                               const ImportOptions& options);
/// The logits trace of Transformers requests (`options.top_k` required).
absl::StatusOr<ImportedTrace> BuildLogitsTrace(const std::vector<LogitsRequest>& requests,
                                               const ImportOptions& options);

/// Writes an imported routing trace as routing JSONL (one line per step:
/// dataset = source, problem_id = id, layer, token_idx, experts,
/// num_experts, and phase "prompt"/"generated" when known), atomically.
/// ReadTrace reads it back to the same trace.
absl::Status WriteRoutingJsonl(const std::string& path, const ImportedTrace& imported);

/// The run name ReadTrace gives a routing JSONL line's dataset and
/// problem_id.
std::string RunName(absl::string_view source, absl::string_view id);

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_TRACE_IMPORT_H_
