// moe-router index DIR [--preset NAME | --pattern P]: writes the XXH3
// manifest of a safetensors checkpoint (every precision variant), so a
// server can verify experts against it, including a checkpoint it may only
// read. Run it offline after a checkpoint changes.
#include <cstdio>

#include "cli/command_line.h"
#include "cli/commands.h"
#include "core/store/safetensors_store.h"

namespace moe_router {

int IndexCommand(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> flags = {
      {"preset", true, false, "expert tensor names: mixtral (default) | qwen_moe | deepseek"},
      {"pattern", true, false, "expert tensor names with {layer} and {expert}"},
  };
  auto cl = CommandLine::Parse(args, flags);
  if (!cl.ok() || cl->positional().size() != 1 || (cl->Has("preset") && cl->Has("pattern"))) {
    return CommandUsage("index", "DIR [--preset NAME | --pattern P]", cl.status(), flags);
  }
  SafetensorsStoreOptions options{.directory = cl->positional()[0]};
  if (cl->Has("pattern")) options.expert_pattern = cl->Value("pattern");
  if (cl->Has("preset")) {
    auto pattern = ExpertPatternPreset(cl->Value("preset"));
    if (!pattern.ok()) return CommandError("index", pattern.status(), 2);
    options.expert_pattern = *pattern;
  }
  auto indexed = SafetensorsStore::WriteManifests(options);
  if (!indexed.ok()) return CommandError("index", indexed.status());
  std::printf("indexed %zu tensors in %s\n", *indexed, options.directory.c_str());
  return 0;
}

}  // namespace moe_router
