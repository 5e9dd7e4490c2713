#include "eval/trace.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/file_io.h"
#include "core/base/json_number.h"
#include "core/model/model_config.h"
#include "core/routing/router.h"
#include "nlohmann/json.hpp"

namespace moe_router {
namespace {

constexpr char kLogitsFormat[] = "moe-router-logits/1";

// One line of a routing JSONL trace.
struct RoutingLine {
  std::string run;
  uint32_t token = 0, layer = 0;
  std::vector<uint32_t> experts;
  uint32_t declared_experts = 0;  // its num_experts, 0 when absent
  bool prompt = false;
};

// A line's fields, range-checked; an error says what is wrong (the caller
// names the line).
absl::StatusOr<RoutingLine> ParseRoutingLine(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  const auto layer = j.find("layer");
  const auto experts = j.find("experts");
  auto token = j.find("token_idx");
  if (token == j.end()) token = j.find("token_pos");
  if (layer == j.end()) return absl::InvalidArgumentError("missing 'layer'");
  if (token == j.end()) return absl::InvalidArgumentError("missing 'token_idx' / 'token_pos'");
  if (experts == j.end() || !experts->is_array() || experts->empty()) {
    return absl::InvalidArgumentError("missing or bad 'experts'");
  }
  RoutingLine out;
  const absl::StatusOr<uint32_t> layer_id = JsonInteger<uint32_t>(*layer, "'layer'");
  if (!layer_id.ok()) return layer_id.status();
  const absl::StatusOr<uint32_t> token_id = JsonInteger<uint32_t>(*token, "the token index");
  if (!token_id.ok()) return token_id.status();
  // A trace is of a model the service could host: what reads it sizes by
  // its layers and experts.
  if (*layer_id >= kMaxModelLayers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "'layer' %d is beyond the %d layers a model may have", *layer_id, kMaxModelLayers));
  }
  out.layer = *layer_id;
  out.token = *token_id;
  absl::StatusOr<std::vector<uint32_t>> ids = JsonIntegers<uint32_t>(*experts, "'experts'");
  if (!ids.ok()) return ids.status();
  out.experts = *std::move(ids);
  for (uint32_t id : out.experts) {
    if (id >= kMaxModelExperts) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "expert %d is beyond the %d experts a model may have", id, kMaxModelExperts));
    }
  }
  // Optional: the model's expert count, when some experts may go unused.
  if (const auto declared = j.find("num_experts"); declared != j.end()) {
    const absl::StatusOr<uint32_t> n = JsonInteger<uint32_t>(*declared, "'num_experts'");
    if (!n.ok()) return n.status();
    if (*n > kMaxModelExperts) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "'num_experts' %d is beyond the %d experts a model may have", *n, kMaxModelExperts));
    }
    for (uint32_t id : out.experts) {
      if (id >= *n) {
        return absl::InvalidArgumentError(
            absl::StrFormat("expert %d is not below 'num_experts' %d", id, *n));
      }
    }
    out.declared_experts = *n;
  }
  if (const auto phase = j.find("phase"); phase != j.end()) {
    if (*phase != "prompt" && *phase != "generated") {
      return absl::InvalidArgumentError("'phase' is not \"prompt\" or \"generated\"");
    }
    out.prompt = *phase == "prompt";
  }
  if (j.contains("dataset")) out.run += j["dataset"].dump();
  if (j.contains("problem_id")) out.run += "/" + j["problem_id"].dump();
  return out;
}

absl::StatusOr<RoutingTrace> ReadRoutingJsonl(const std::string& path, std::ifstream& in) {
  // run name -> token -> layer -> experts
  std::map<std::string, std::map<uint32_t, std::map<uint32_t, std::vector<uint32_t>>>> runs;
  std::map<std::string, std::set<uint32_t>> prompt_tokens;  // run name -> tokens marked
  std::vector<std::string> run_order;
  RoutingTrace trace;
  std::string text;
  uint64_t line_no = 0;
  uint32_t max_expert = 0, num_experts = 0;
  while (std::getline(in, text)) {
    ++line_no;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrFormat("%s:%d: %s", path, line_no, why));
    };
    absl::StatusOr<RoutingLine> line = ParseRoutingLine(text);
    if (!line.ok()) return bad(line.status().message());
    for (uint32_t id : line->experts) max_expert = std::max(max_expert, id);
    num_experts = std::max(num_experts, line->declared_experts);
    if (trace.top_k == 0) trace.top_k = static_cast<uint32_t>(line->experts.size());
    if (line->experts.size() != trace.top_k) {
      return bad(absl::StrFormat("%d experts where earlier lines have %d", line->experts.size(),
                                 trace.top_k));
    }
    if (!runs.count(line->run)) run_order.push_back(line->run);
    auto& slot = runs[line->run][line->token][line->layer];
    if (!slot.empty()) {
      return bad(absl::StrFormat("token %d layer %d of run %s appears twice", line->token,
                                 line->layer, line->run));
    }
    slot = std::move(line->experts);
    if (line->prompt) prompt_tokens[line->run].insert(line->token);
    trace.num_layers = std::max(trace.num_layers, line->layer + 1);
  }
  if (in.bad()) return ErrnoError("cannot read", path);
  if (runs.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s: no trace lines", path));
  trace.num_experts = std::max(num_experts, max_expert + 1);
  for (const std::string& name : run_order) {
    RoutingTrace::Run run;
    run.name = name;
    for (const auto& [token, layers] : runs[name]) {
      for (const auto& [layer, experts] : layers) {
        run.steps.push_back({token, layer});
        run.experts.insert(run.experts.end(), experts.begin(), experts.end());
      }
      run.tokens = token + 1;
    }
    const std::set<uint32_t>& prompt = prompt_tokens[name];
    if (!prompt.empty() && *prompt.rbegin() + 1 != prompt.size()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: run %s marks tokens up to %d as its prompt but not all of those before", path, name,
          *prompt.rbegin()));
    }
    run.prompt_tokens = static_cast<uint32_t>(prompt.size());
    trace.runs.push_back(std::move(run));
  }
  return trace;
}

absl::StatusOr<RoutingTrace> ReadLogitsTrace(const std::string& path, std::ifstream& in,
                                             const nlohmann::json& header) {
  RoutingTrace trace;
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", path, why));
  };
  try {
    for (auto [field, out] :
         {std::pair{"num_layers", &trace.num_layers}, std::pair{"num_experts", &trace.num_experts},
          std::pair{"top_k", &trace.top_k}}) {
      auto v = JsonInteger<uint32_t>(header.at(field), absl::StrCat("header '", field, "'"));
      if (!v.ok()) return bad(std::string(v.status().message()));
      *out = *v;
    }
    for (const auto& r : header.at("runs")) {
      RoutingTrace::Run run;
      run.name = r.at("name").get<std::string>();
      auto tokens = JsonInteger<uint32_t>(r.at("tokens"), "a run's 'tokens'");
      if (!tokens.ok()) return bad(std::string(tokens.status().message()));
      run.tokens = *tokens;
      if (const auto prompt = r.find("prompt_tokens"); prompt != r.end()) {
        auto p = JsonInteger<uint32_t>(*prompt, "a run's 'prompt_tokens'");
        if (!p.ok()) return bad(std::string(p.status().message()));
        if (*p > run.tokens) {
          return bad(
              absl::StrFormat("run %s has %d prompt tokens of %d", run.name, *p, run.tokens));
        }
        run.prompt_tokens = *p;
      }
      trace.runs.push_back(std::move(run));
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(absl::StrFormat("bad logits trace header: %s", e.what()));
  }
  if (trace.num_layers == 0 || trace.num_experts == 0 || trace.top_k == 0 ||
      trace.top_k > trace.num_experts || trace.top_k > kMaxRank) {
    return bad("logits trace header has an impossible shape");
  }
  if (trace.num_layers > kMaxModelLayers || trace.num_experts > kMaxModelExperts) {
    return bad(absl::StrFormat(
        "logits trace header: %d layers x %d experts is beyond what a model may have (%d x %d)",
        trace.num_layers, trace.num_experts, kMaxModelLayers, kMaxModelExperts));
  }
  if (const auto routing = header.find("routing"); routing != header.end()) {
    if (absl::Status s = RoutingRuleFromJson(*routing, trace.num_layers, trace.num_experts,
                                             trace.top_k, &trace.rule, &trace.choice_bias);
        !s.ok()) {
      return bad(absl::StrCat("header 'routing': ", s.message()));
    }
  }
  // The records the header promises must be in the file before anything is
  // sized from it: a header alone cannot make the reader allocate.
  const std::streampos records_start = in.tellg();
  in.seekg(0, std::ios::end);
  const uint64_t record_bytes = static_cast<uint64_t>(in.tellg() - records_start);
  in.seekg(records_start);
  const uint64_t step_bytes = uint64_t{trace.num_experts} * sizeof(float);
  uint64_t promised = 0;
  for (const RoutingTrace::Run& run : trace.runs) {
    const uint64_t steps = uint64_t{run.tokens} * trace.num_layers;  // < 2^64: both 32-bit
    if (steps > record_bytes / step_bytes || promised > record_bytes - steps * step_bytes) {
      return bad(absl::StrFormat(
          "logits of run %s are truncated: the header promises more than the file's %d "
          "bytes of records hold",
          run.name, record_bytes));
    }
    promised += steps * step_bytes;
  }
  for (RoutingTrace::Run& run : trace.runs) {
    for (uint32_t t = 0; t < run.tokens; ++t) {
      for (uint32_t l = 0; l < trace.num_layers; ++l) run.steps.push_back({t, l});
    }
    run.logits.resize(run.steps.size() * trace.num_experts);
    in.read(reinterpret_cast<char*>(run.logits.data()),
            static_cast<std::streamsize>(run.logits.size() * sizeof(float)));
    if (!in) return bad(absl::StrFormat("logits of run %s are truncated", run.name));
  }
  if (absl::Status s = FillTopKFromLogits(trace); !s.ok()) return bad(std::string(s.message()));
  return trace;
}

}  // namespace

uint64_t RoutingTrace::Tokens() const {
  uint64_t n = 0;
  for (const Run& r : runs) n += r.tokens;
  return n;
}

uint64_t RoutingTrace::Steps() const {
  uint64_t n = 0;
  for (const Run& r : runs) n += r.steps.size();
  return n;
}

absl::StatusOr<RoutingTrace> ReadTrace(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("cannot open", path);
  std::string first;
  std::getline(in, first);
  const nlohmann::json header = nlohmann::json::parse(first, nullptr, false);
  // A comparison, not value<T>(): a "format" of another type is then a
  // JSONL line, refused as such, not a type_error (found by fuzzing).
  if (!header.is_discarded() && header.is_object() && header.contains("format") &&
      header["format"] == kLogitsFormat) {
    return ReadLogitsTrace(path, in, header);
  }
  in.clear();
  in.seekg(0);
  return ReadRoutingJsonl(path, in);
}

absl::Status FillTopKFromLogits(RoutingTrace& trace) {
  const uint32_t n = trace.num_experts, k = trace.top_k;
  // Per layer, a run's steps routed as one batch by the model's rule (no
  // bonus, nothing resident).
  RouterConfig config;
  config.num_experts = n;
  config.top_k = k;
  config.rule = trace.rule;
  config.memory_aware = false;
  config.prefetch_threshold = 0;
  // Each run's steps ordered by layer, so that the work grows with the
  // steps, and a router exists only for a layer some step visits, one at a
  // time: a header's num_layers alone allocates nothing (found by fuzzing).
  std::vector<uint32_t> layers_visited;
  std::vector<std::vector<size_t>> by_layer(trace.runs.size());
  for (size_t r = 0; r < trace.runs.size(); ++r) {
    RoutingTrace::Run& run = trace.runs[r];
    run.experts.resize(run.steps.size() * k);
    std::vector<size_t>& order = by_layer[r];
    order.resize(run.steps.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return run.steps[a].layer < run.steps[b].layer; });
    for (size_t i : order) {
      const uint32_t layer = run.steps[i].layer;
      if (layers_visited.empty() || layers_visited.back() != layer) layers_visited.push_back(layer);
    }
  }
  std::sort(layers_visited.begin(), layers_visited.end());
  layers_visited.erase(std::unique(layers_visited.begin(), layers_visited.end()),
                       layers_visited.end());
  std::vector<size_t> cursor(trace.runs.size(), 0);
  std::vector<float> batch;
  std::vector<size_t> at;
  RouteResult out;
  for (uint32_t l : layers_visited) {
    auto router = LayerRouter::Create(config, AffinityConfig{}, trace.LayerChoiceBias(l));
    if (!router.ok()) return router.status();
    for (size_t r = 0; r < trace.runs.size(); ++r) {
      RoutingTrace::Run& run = trace.runs[r];
      const std::vector<size_t>& order = by_layer[r];
      batch.clear();
      at.clear();
      for (size_t& c = cursor[r]; c < order.size() && run.steps[order[c]].layer == l; ++c) {
        const auto logits = trace.StepLogits(run, order[c]);
        batch.insert(batch.end(), logits.begin(), logits.end());
        at.push_back(order[c]);
      }
      if (at.empty()) continue;
      if (absl::Status s = router->Route(batch, nullptr, &out); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("run %s, layer %d: %s", run.name, l, s.message()));
      }
      for (size_t j = 0; j < at.size(); ++j) {
        const auto chosen = out.TokenExperts(static_cast<uint32_t>(j));
        std::copy(chosen.begin(), chosen.end(), run.experts.begin() + at[j] * k);
      }
    }
  }
  return absl::OkStatus();
}

nlohmann::json RoutingRuleToJson(const RoutingRule& rule, absl::Span<const float> bias) {
  nlohmann::json j = {{"score", ScoreFunctionName(rule.score)},
                      {"choiceBias", rule.choice_bias},
                      {"selection", SelectionName(rule.selection)},
                      {"numGroups", rule.num_groups},
                      {"keptGroups", rule.kept_groups},
                      {"groupScore", GroupScoreName(rule.group_score)},
                      {"maskedGroups", MaskedGroupsName(rule.masked_groups)},
                      {"normalization", NormalizationName(rule.normalization)},
                      {"normalizationParam", rule.normalization_param},
                      {"scaling", rule.scaling}};
  if (!bias.empty()) j["bias"] = std::vector<float>(bias.begin(), bias.end());
  return j;
}

absl::Status RoutingRuleFromJson(const nlohmann::json& json, uint32_t num_layers,
                                 uint32_t num_experts, uint32_t top_k, RoutingRule* rule,
                                 std::vector<float>* bias) {
  if (!json.is_object()) return absl::InvalidArgumentError("routing must be an object");
  RoutingRule r;
  // Each named step, when present, parsed by the rule's own names.
  const auto named = [&](const char* field, auto parse, auto* out) -> absl::Status {
    const auto it = json.find(field);
    if (it == json.end()) return absl::OkStatus();
    if (!it->is_string()) return absl::InvalidArgumentError(absl::StrCat(field, " must be a name"));
    auto value = parse(it->get<std::string>());
    if (!value.ok()) return value.status();
    *out = *value;
    return absl::OkStatus();
  };
  for (absl::Status s : {named("score", ParseScoreFunction, &r.score),
                         named("selection", ParseSelection, &r.selection),
                         named("groupScore", ParseGroupScore, &r.group_score),
                         named("maskedGroups", ParseMaskedGroups, &r.masked_groups),
                         named("normalization", ParseNormalization, &r.normalization)}) {
    if (!s.ok()) return s;
  }
  try {
    if (json.contains("choiceBias")) r.choice_bias = json.at("choiceBias").get<bool>();
    if (json.contains("numGroups")) r.num_groups = json.at("numGroups").get<uint32_t>();
    if (json.contains("keptGroups")) r.kept_groups = json.at("keptGroups").get<uint32_t>();
    if (json.contains("normalizationParam")) {
      r.normalization_param = json.at("normalizationParam").get<double>();
    }
    if (json.contains("scaling")) r.scaling = json.at("scaling").get<double>();
    std::vector<float> b;
    if (json.contains("bias")) {
      const nlohmann::json& values = json.at("bias");
      // Counted before anything is sized from it.
      if (!values.is_array() ||
          values.size() != (r.choice_bias ? size_t{num_layers} * num_experts : 0)) {
        return ValidateChoiceBias(r, std::vector<float>(values.is_array() ? values.size() : 1),
                                  num_layers, num_experts);
      }
      b = values.get<std::vector<float>>();
    }
    if (absl::Status s = r.Validate(num_experts, top_k); !s.ok()) return s;
    if (absl::Status s = ValidateChoiceBias(r, b, num_layers, num_experts); !s.ok()) return s;
    *rule = r;
    *bias = std::move(b);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad routing: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status WriteLogitsTrace(const std::string& path, const RoutingTrace& trace) {
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& run : trace.runs) {
    nlohmann::json r = {{"name", run.name}, {"tokens", run.tokens}};
    if (run.prompt_tokens > 0) r["prompt_tokens"] = run.prompt_tokens;
    runs.push_back(std::move(r));
  }
  nlohmann::json header = {{"format", kLogitsFormat},
                           {"num_layers", trace.num_layers},
                           {"num_experts", trace.num_experts},
                           {"top_k", trace.top_k},
                           {"runs", runs}};
  if (!trace.rule.IsDefault() || !trace.choice_bias.empty()) {
    header["routing"] = RoutingRuleToJson(trace.rule, trace.choice_bias);
  }
  std::string out = header.dump() + "\n";
  for (const auto& run : trace.runs) {
    if (run.steps.size() != size_t{run.tokens} * trace.num_layers ||
        run.logits.size() != run.steps.size() * trace.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrFormat("run %s has no logits of the trace's shape", run.name));
    }
    out.append(reinterpret_cast<const char*>(run.logits.data()), run.logits.size() * sizeof(float));
  }
  return WriteFileAtomically(path, out);
}

TraceStats ComputeTraceStats(const RoutingTrace& trace) {
  TraceStats s;
  const uint32_t layers = trace.num_layers;
  std::vector<uint64_t> overlap(layers, 0), pairs(layers, 0), reused(layers, 0),
      paired_accesses(layers, 0);
  uint64_t recur = 0, recur_pairs = 0;
  std::vector<std::vector<uint64_t>> uses(layers, std::vector<uint64_t>(trace.num_experts, 0));
  // Per layer, the run's latest step there and its token, to pair each step
  // with the previous token's (steps come in token order): memory by
  // layers, not by a run's tokens, which a sparse trace may make many.
  std::vector<size_t> latest_step(layers);
  std::vector<int64_t> latest_token(layers);
  for (const auto& run : trace.runs) {
    std::fill(latest_token.begin(), latest_token.end(), -1);
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const auto [t, l] = run.steps[i];
      const auto now = trace.StepExperts(run, i);
      for (uint32_t e : now) ++uses[l][e];
      const bool follows = latest_token[l] >= 0 && latest_token[l] + 1 == int64_t{t};
      const size_t previous = latest_step[l];
      latest_step[l] = i;
      latest_token[l] = t;
      if (!follows) continue;
      const auto before = trace.StepExperts(run, previous);
      uint64_t shared = 0;
      for (uint32_t e : now) shared += std::find(before.begin(), before.end(), e) != before.end();
      overlap[l] += shared > 0;
      reused[l] += shared;
      paired_accesses[l] += now.size();
      ++pairs[l];
      recur += now[0] == before[0];
      ++recur_pairs;
    }
  }
  s.skew_min = 1e9;
  for (uint32_t l = 0; l < layers; ++l) {
    const double o = pairs[l] ? static_cast<double>(overlap[l]) / pairs[l] : 0;
    s.overlap_by_layer.push_back(o);
    s.overlap_mean += o / layers;
    const uint64_t total = std::accumulate(uses[l].begin(), uses[l].end(), uint64_t{0});
    const uint64_t busiest = *std::max_element(uses[l].begin(), uses[l].end());
    const double skew = total ? static_cast<double>(busiest) * trace.num_experts / total : 0;
    s.skew_min = std::min(s.skew_min, skew);
    s.skew_max = std::max(s.skew_max, skew);
    s.skew_mean += skew / layers;
    std::vector<uint64_t> sorted = uses[l];
    const size_t tenth = std::max<size_t>(1, (sorted.size() + 9) / 10);
    std::partial_sort(sorted.begin(), sorted.begin() + tenth, sorted.end(), std::greater<>());
    const uint64_t top = std::accumulate(sorted.begin(), sorted.begin() + tenth, uint64_t{0});
    const auto share = [](uint64_t part, uint64_t whole) {
      return whole ? static_cast<double>(part) / whole : 0.0;
    };
    s.reuse_by_layer.push_back(share(reused[l], paired_accesses[l]));
    s.busiest_share_by_layer.push_back(share(busiest, total));
    s.top_tenth_share_by_layer.push_back(share(top, total));
    s.reuse_mean += s.reuse_by_layer.back() / layers;
    s.busiest_share_mean += s.busiest_share_by_layer.back() / layers;
    s.top_tenth_share_mean += s.top_tenth_share_by_layer.back() / layers;
  }
  s.first_choice_recurrence = recur_pairs ? static_cast<double>(recur) / recur_pairs : 0;
  return s;
}

RoutingTrace SplitRoundRobin(const RoutingTrace& trace, uint32_t workers, uint32_t index) {
  RoutingTrace part = trace;
  part.runs.clear();
  for (size_t r = index; workers > 0 && r < trace.runs.size(); r += workers) {
    part.runs.push_back(trace.runs[r]);
  }
  return part;
}

RoutingTrace Concatenated(const RoutingTrace& trace) {
  RoutingTrace whole = trace;
  whole.runs.assign(1, RoutingTrace::Run());
  RoutingTrace::Run& out = whole.runs[0];
  out.name = "concatenated";
  if (!trace.runs.empty()) out.prompt_tokens = trace.runs[0].prompt_tokens;
  for (const RoutingTrace::Run& run : trace.runs) {
    for (RoutingTrace::Step step : run.steps) {
      step.token += out.tokens;
      out.steps.push_back(step);
    }
    out.experts.insert(out.experts.end(), run.experts.begin(), run.experts.end());
    out.logits.insert(out.logits.end(), run.logits.begin(), run.logits.end());
    out.tokens += run.tokens;
  }
  return whole;
}

}  // namespace moe_router
