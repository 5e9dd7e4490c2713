// moe_router._engine: the in-process worker engine for Python inference
// engines. The same C++ InProcessWorker (client/in_process_worker.h): routing
// runs without the GIL, the Learn stream on C++ threads.
#include <grpcpp/grpcpp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "client/in_process_worker.h"
#include "core/cache/expert_size_table.h"
#include "core/model/model_config.h"
#include "python/binding_util.h"

namespace py = pybind11;

namespace moe_router {
namespace {

// A float32 C-contiguous array's values, read in place.
absl::Span<const float> SpanOf(const py::array_t<float, py::array::c_style>& values) {
  return {values.data(), static_cast<size_t>(values.size())};
}

// A numpy view of a step's buffer, alive as long as the step is: no copy.
template <typename T>
py::array View(std::vector<T>& buffer, std::vector<py::ssize_t> shape, py::handle owner) {
  return py::array_t<T>(shape, buffer.data(), owner);
}

py::array Keys(std::vector<ExpertKey>& keys, py::handle owner) {
  static_assert(sizeof(ExpertKey) == 2 * sizeof(uint32_t));
  return py::array_t<uint32_t>({static_cast<py::ssize_t>(keys.size()), py::ssize_t{2}},
                               reinterpret_cast<uint32_t*>(keys.data()), owner);
}

// A routing rule from a dict of RoutingSettings' names ({"preset":
// "deepseek_v3", "num_groups": 8, ...}); an unknown key is an error naming
// it.
RoutingRule RuleFromDict(const py::dict& settings) {
  RoutingRule rule;
  if (settings.contains("preset")) {
    auto preset = RoutingRulePreset(settings["preset"].cast<std::string>());
    Check(preset.status());
    rule = *preset;
  }
  for (const auto& [key, value] : settings) {
    const std::string name = key.cast<std::string>();
    const auto text = [&] { return value.cast<std::string>(); };
    const auto named = [&](auto parsed, auto* field) {
      Check(parsed.status());
      *field = *parsed;
    };
    if (name == "preset") {
      continue;
    } else if (name == "score") {
      named(ParseScoreFunction(text()), &rule.score);
    } else if (name == "selection") {
      named(ParseSelection(text()), &rule.selection);
    } else if (name == "group_score") {
      named(ParseGroupScore(text()), &rule.group_score);
    } else if (name == "masked_groups") {
      named(ParseMaskedGroups(text()), &rule.masked_groups);
    } else if (name == "normalization") {
      named(ParseNormalization(text()), &rule.normalization);
    } else if (name == "choice_bias") {
      rule.choice_bias = value.cast<bool>();
    } else if (name == "num_groups") {
      rule.num_groups = value.cast<uint32_t>();
    } else if (name == "kept_groups") {
      rule.kept_groups = value.cast<uint32_t>();
    } else if (name == "normalization_param") {
      rule.normalization_param = value.cast<double>();
    } else if (name == "scaling") {
      rule.scaling = value.cast<double>();
    } else {
      throw std::invalid_argument("routing: unknown setting '" + name +
                                  "' (preset, score, choice_bias, selection, num_groups, "
                                  "kept_groups, group_score, masked_groups, normalization, "
                                  "normalization_param, scaling)");
    }
  }
  return rule;
}

// The per-layer calls, on whichever engine a subclass holds.
class PyEngine {
 public:
  virtual ~PyEngine() = default;

  // Routes one layer's batch into `step`; logits: float32, C-contiguous,
  // tokens x num_experts (or one row), read in place.
  void Route(uint32_t layer, py::array_t<float, py::array::c_style> logits, WorkerStep& step) {
    const absl::Span<const float> values = SpanOf(logits);
    WorkerEngine& e = engine();
    absl::Status status;
    {
      py::gil_scoped_release unlocked;
      status = e.Route(layer, values, &step);
    }
    Check(status);
  }

  void Prefetch(uint32_t layer, py::array_t<float, py::array::c_style> guess, uint32_t budget,
                WorkerStep& step) {
    const absl::Span<const float> values = SpanOf(guess);
    WorkerEngine& e = engine();
    absl::Status status;
    {
      py::gil_scoped_release unlocked;
      status = e.Prefetch(layer, values, budget, &step.cache);
    }
    Check(status);
  }

  void Adopt(const std::vector<std::pair<uint32_t, uint32_t>>& held) {
    std::vector<ExpertKey> keys;
    keys.reserve(held.size());
    for (const auto& [layer, expert] : held) keys.push_back({layer, expert});
    Check(engine().Adopt(keys));
  }

  std::vector<std::pair<uint32_t, uint32_t>> Residency() {
    std::vector<std::pair<uint32_t, uint32_t>> held;
    for (const auto& [key, variant] : engine().Residency()) {
      held.emplace_back(key.layer, key.expert);
    }
    return held;
  }

 protected:
  virtual WorkerEngine& engine() = 0;
};

// A worker of a model that moe-routerd serves: settings and the fleet's
// learning come over the Learn stream.
class PyWorker : public PyEngine {
 public:
  PyWorker(const std::string& target, const std::string& model, const std::string& cache,
           uint64_t budget_bytes, const std::string& eviction_policy, double report_interval_s,
           double connect_timeout_s) {
    InProcessWorker::Options options{.model = model,
                                     .cache = cache,
                                     .budget_bytes = budget_bytes,
                                     .eviction_policy = eviction_policy,
                                     .report_interval = absl::Seconds(report_interval_s),
                                     .connect_timeout = absl::Seconds(connect_timeout_s)};
    auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    absl::StatusOr<std::unique_ptr<InProcessWorker>> worker;
    {
      py::gil_scoped_release unlocked;
      worker = InProcessWorker::Start(std::move(channel), options);
    }
    Check(worker.status());
    worker_ = *std::move(worker);
  }

  bool Flush(double timeout_s) {
    InProcessWorker& w = worker();
    py::gil_scoped_release unlocked;
    return w.Flush(absl::Seconds(timeout_s));
  }

  py::dict ControlStatsDict() {
    const ControlStats s = worker().control_stats();
    py::dict d;
    d["connected"] = s.connected;
    d["started_without_service"] = s.started_without_service;
    d["connects"] = s.connects;
    d["reports_sent"] = s.reports_sent;
    d["reports_dropped"] = s.reports_dropped;
    d["updates_received"] = s.updates_received;
    d["bytes_up"] = s.bytes_up;
    d["bytes_down"] = s.bytes_down;
    d["acknowledged"] = s.acknowledged;
    return d;
  }

  void Close() {
    py::gil_scoped_release unlocked;
    worker_.reset();
  }

 protected:
  WorkerEngine& engine() override { return worker().engine(); }

 private:
  InProcessWorker& worker() {
    if (worker_ == nullptr) throw std::runtime_error("the worker is closed");
    return *worker_;
  }
  std::unique_ptr<InProcessWorker> worker_;
};

// A worker on its own, without moe-routerd: the model's shape and router
// settings given here, every expert of one size, nothing learned from a
// fleet (prefetch from the router's runners-up and gate guesses only).
class PyLocalEngine : public PyEngine {
 public:
  PyLocalEngine(uint32_t num_layers, uint32_t num_experts, uint32_t top_k, uint64_t expert_bytes,
                uint64_t budget_bytes, double cache_bonus, const std::string& eviction_policy,
                double prefetch_threshold, uint32_t protected_top, uint32_t max_rank,
                double min_gate_mass, const py::dict& routing,
                const std::optional<py::array_t<float, py::array::c_style>>& choice_bias) {
    ModelConfig model;
    model.name = "local";
    model.num_layers = num_layers;
    model.router.num_experts = num_experts;
    model.router.top_k = top_k;
    model.router.rule = RuleFromDict(routing);
    if (choice_bias) {
      const absl::Span<const float> bias = SpanOf(*choice_bias);
      model.choice_bias.assign(bias.begin(), bias.end());
    }
    model.router.memory_aware = cache_bonus > 0;
    model.router.cache_bonus = cache_bonus;
    model.router.prefetch_threshold = prefetch_threshold;
    model.router.protected_top = protected_top;
    model.router.max_rank = max_rank;
    model.router.min_gate_mass = min_gate_mass;
    model.budget_bytes = budget_bytes;
    if (!eviction_policy.empty()) model.eviction_policy = eviction_policy;
    model.prefetch_next_layer = 0;  // co-activation comes from a fleet
    Check(model.Validate());
    if (expert_bytes == 0) throw std::invalid_argument("expert_bytes must be positive");
    auto sizes = ExpertSizeTable::FromSizes(
        {"default"}, num_layers, num_experts,
        std::vector<uint64_t>(size_t{num_layers} * num_experts, expert_bytes));
    Check(sizes.status());
    auto engine = WorkerEngine::Create(model, *std::move(sizes),
                                       {.cache = "local", .budget_bytes = budget_bytes});
    Check(engine.status());
    engine_ = *std::move(engine);
  }

  void Close() { engine_.reset(); }

 protected:
  WorkerEngine& engine() override {
    if (engine_ == nullptr) throw std::runtime_error("the engine is closed");
    return *engine_;
  }

 private:
  std::unique_ptr<WorkerEngine> engine_;
};

// Step: one layer call's answer, its buffers seen from numpy without a copy.
void BindStep(py::module_& m) {
  py::class_<WorkerStep>(m, "Step",
                         "One layer call's answer. Its arrays are views of buffers the next "
                         "call with this step overwrites: copy what must outlive it.")
      .def(py::init<>())
      .def_property_readonly("tokens", [](const WorkerStep& s) { return s.batch.tokens; })
      .def_property_readonly("experts",
                             [](py::object self) {
                               auto& s = self.cast<WorkerStep&>();
                               return View(s.batch.experts, {s.batch.tokens, s.batch.top_k}, self);
                             })
      .def_property_readonly("weights",
                             [](py::object self) {
                               auto& s = self.cast<WorkerStep&>();
                               return View(s.batch.weights, {s.batch.tokens, s.batch.top_k}, self);
                             })
      .def_property_readonly("resident",
                             [](py::object self) {
                               auto& s = self.cast<WorkerStep&>();
                               return View(s.batch.resident, {s.batch.tokens, s.batch.top_k}, self);
                             })
      .def_property_readonly(
          "evictions",
          [](py::object self) { return Keys(self.cast<WorkerStep&>().cache.evictions, self); },
          "(n, 2) layer, expert: drop these first")
      .def_property_readonly(
          "urgent",
          [](py::object self) { return Keys(self.cast<WorkerStep&>().cache.urgent, self); },
          "(n, 2): load before computing the layer")
      .def_property_readonly(
          "prefetch",
          [](py::object self) { return Keys(self.cast<WorkerStep&>().cache.prefetch, self); },
          "(n, 2): load ahead");
}

// The engines: the per-layer calls they share, the service-backed worker and
// the engine on its own.
void BindEngines(py::module_& m) {
  py::class_<PyEngine>(m, "Engine", "The per-layer calls every engine answers.")
      .def("route", &PyEngine::Route, py::arg("layer"), py::arg("logits"), py::arg("step"),
           "Routes one layer's float32 (tokens, num_experts) logits into step, without copying "
           "them and without the GIL.")
      .def("prefetch", &PyEngine::Prefetch, py::arg("layer"), py::arg("gate_guess"),
           py::arg("budget"), py::arg("step"))
      .def("adopt", &PyEngine::Adopt, py::arg("held"),
           "The worker holds exactly these (layer, expert) pairs.")
      .def("residency", &PyEngine::Residency);
  py::class_<PyWorker, PyEngine>(m, "InProcessWorker")
      .def(py::init<const std::string&, const std::string&, const std::string&, uint64_t,
                    const std::string&, double, double>(),
           py::arg("target"), py::arg("model"), py::arg("cache"), py::arg("budget_bytes"),
           py::arg("eviction_policy") = "", py::arg("report_interval_s") = 0.1,
           py::arg("connect_timeout_s") = 2.0)
      .def("flush", &PyWorker::Flush, py::arg("timeout_s") = 10.0)
      .def("control_stats", &PyWorker::ControlStatsDict)
      .def("close", &PyWorker::Close);
  RouterConfig defaults;
  py::class_<PyLocalEngine, PyEngine>(m, "LocalEngine")
      .def(py::init<uint32_t, uint32_t, uint32_t, uint64_t, uint64_t, double, const std::string&,
                    double, uint32_t, uint32_t, double, const py::dict&,
                    const std::optional<py::array_t<float, py::array::c_style>>&>(),
           py::arg("num_layers"), py::arg("num_experts"), py::arg("top_k"), py::arg("expert_bytes"),
           py::arg("budget_bytes"), py::arg("cache_bonus") = defaults.cache_bonus,
           py::arg("eviction_policy") = "",
           py::arg("prefetch_threshold") = defaults.prefetch_threshold,
           py::arg("protected_top") = defaults.protected_top,
           py::arg("max_rank") = defaults.max_rank,
           py::arg("min_gate_mass") = defaults.min_gate_mass, py::arg("routing") = py::dict(),
           py::arg("choice_bias") = std::nullopt,
           "The worker engine alone. routing: the model's rule as a dict of RoutingSettings' "
           "names ({'preset': 'deepseek_v3', 'num_groups': 8, ...}; default Mixtral's); "
           "choice_bias: float32 (num_layers, num_experts) when the rule has a bias.")
      .def("close", &PyLocalEngine::Close);
}

}  // namespace
}  // namespace moe_router

PYBIND11_MODULE(_engine, m) {
  m.doc() =
      "The in-process worker engine: routing in the worker's process against its own memory, "
      "learning from the fleet over a background stream (C++ InProcessWorker).";
  moe_router::BindStep(m);
  moe_router::BindEngines(m);
  moe_router::BindCheckpointStore(m);
}
