// moe-router: the command-line tool. One binary, subcommands.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>&);
};

const Command kCommands[] = {
    {"demo", "run an inference loop over the core engine on the embedded default model",
     moe_router::DemoCommand},
    {"replay", "replay a routing trace through the expert cache: hit rates per policy",
     moe_router::ReplayCommand},
    {"trace", "a trace's statistics (trace stats); an engine's routing into a trace (trace import)",
     moe_router::TraceCommand},
    {"tracegen", "write a synthetic gate-logit trace; --compare checks it against a real one",
     moe_router::TracegenCommand},
    {"sweep", "cache-aware routing trade-off: hit rate vs gate mass, per bonus and guard",
     moe_router::SweepCommand},
    {"index", "write the checksum manifest of a safetensors checkpoint", moe_router::IndexCommand},
    {"models", "list a server's models", moe_router::ModelsCommand},
    {"register", "register the models of a JSON file (ModelSpec or {\"models\": [...]})",
     moe_router::RegisterCommand},
    {"route", "route logits (from a file, or random) through a server", moe_router::RouteCommand},
    {"prefetch", "queue expert page-ins: explicit experts, or a budget the server fills",
     moe_router::PrefetchCommand},
    {"stats", "a model's statistics as a table", moe_router::StatsCommand},
    {"fetch", "fetch an expert into a safetensors file, verifying its checksums",
     moe_router::FetchCommand},
    {"loadgen", "closed-loop load on RouteTokens/RouteStream: tokens/s and latency percentiles",
     moe_router::LoadgenCommand},
    {"worker", "play inference workers with their own caches over a trace, moving the bytes",
     moe_router::WorkerCommand},
    {"soak", "drive a server hard for a while, checking budgets, queues and memory throughout",
     moe_router::SoakCommand},
};

int Usage(FILE* out) {
  std::fprintf(out, "usage: moe-router COMMAND [flags]\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out, "\n'moe-router COMMAND --help' lists a command's flags.\n");
  return out == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(stderr);
  const std::string name = argv[1];
  if (name == "help" || name == "--help" || name == "-h") return Usage(stdout);
  for (const Command& c : kCommands) {
    if (name == c.name) return c.run(std::vector<std::string>(argv + 2, argv + argc));
  }
  std::fprintf(stderr, "moe-router: unknown command '%s'\n\n", name.c_str());
  return Usage(stderr);
}
