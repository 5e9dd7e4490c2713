// The trace reader on arbitrary files, in both formats (JSONL routing
// traces and binary logits traces, told apart by the first line): a status
// or a trace whose steps and experts agree with its shape.
#include <cstdlib>

#include "eval/trace.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const moe_router::fuzz::InputFile file(data, size);
  const auto trace = moe_router::ReadTrace(file.path());
  if (!trace.ok()) return 0;
  for (const auto& run : trace->runs) {
    if (run.experts.size() != run.steps.size() * trace->top_k) std::abort();
    if (!run.logits.empty() && run.logits.size() != run.steps.size() * trace->num_experts) {
      std::abort();
    }
    for (uint32_t e : run.experts) {
      if (e >= trace->num_experts) std::abort();
    }
  }
  return 0;
}
