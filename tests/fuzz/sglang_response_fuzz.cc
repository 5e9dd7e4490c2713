// The SGLang response parser on arbitrary lines, shaped by the flags and by
// the response itself, then the trace built from what it accepts: a status,
// or requests whose ids fill their shape and a trace whose experts agree
// with its own.
#include <cstdlib>

#include "eval/trace_import.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view line(reinterpret_cast<const char*>(data), size);
  moe_router::ImportOptions by_flags;
  by_flags.num_layers = 3;
  by_flags.top_k = 2;
  moe_router::ImportOptions by_counts;
  by_counts.top_k = 2;
  for (const moe_router::ImportOptions& options :
       {by_flags, by_counts, moe_router::ImportOptions{}}) {
    const auto requests = moe_router::ParseSglangLine(line, "fuzz:1", "fuzz", options);
    if (!requests.ok()) continue;
    for (const auto& r : *requests) {
      if (r.ids.size() != uint64_t{r.tokens} * r.layers * r.top_k) std::abort();
      if (r.prompt_tokens > static_cast<int64_t>(r.tokens)) std::abort();
    }
    const auto trace = moe_router::BuildRoutedTrace(*requests, options);
    if (!trace.ok()) continue;
    for (const auto& run : trace->trace.runs) {
      if (run.experts.size() != run.steps.size() * trace->trace.top_k) std::abort();
      for (uint32_t e : run.experts) {
        if (e >= trace->trace.num_experts) std::abort();
      }
    }
  }
  return 0;
}
