// moe_router._engine.CheckpointStore: a safetensors checkpoint's experts
// through the project's store (core/store/safetensors_store.h), so Python
// workers read exactly the bytes moe-routerd would serve, checksum-verified.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>

#include "core/store/safetensors_store.h"
#include "python/binding_util.h"

namespace py = pybind11;

namespace moe_router {
namespace {

class PyCheckpointStore {
 public:
  PyCheckpointStore(const std::string& directory, const std::string& expert_pattern) {
    absl::StatusOr<std::unique_ptr<SafetensorsStore>> store;
    {
      py::gil_scoped_release unlocked;  // opening may hash the whole checkpoint
      store = SafetensorsStore::Open({.directory = directory, .expert_pattern = expert_pattern});
    }
    Check(store.status());
    store_ = *std::move(store);
  }

  // [(name, dtype, shape)] of an expert, without reading it.
  py::list Tensors(uint32_t layer, uint32_t expert) const {
    absl::StatusOr<std::vector<TensorData>> tensors =
        store_->Tensors({layer, expert}, SafetensorsStore::kDefaultVariant);
    Check(tensors.status());
    py::list described;
    for (const TensorData& t : *tensors) {
      described.append(py::make_tuple(t.name, t.dtype, py::tuple(py::cast(t.shape))));
    }
    return described;
  }

  // [(name, dtype, shape, uint8 array)]: the expert read and verified; the
  // arrays share one buffer, alive while any of them is.
  py::list Load(uint32_t layer, uint32_t expert) const {
    absl::StatusOr<std::shared_ptr<const ExpertData>> loaded;
    {
      py::gil_scoped_release unlocked;
      loaded = store_->Load({layer, expert}, SafetensorsStore::kDefaultVariant);
    }
    Check(loaded.status());
    auto* keep = new std::shared_ptr<const ExpertData>(*std::move(loaded));
    py::capsule owner(keep,
                      [](void* p) { delete static_cast<std::shared_ptr<const ExpertData>*>(p); });
    const ExpertData& data = **keep;
    py::list tensors;
    for (const TensorData& t : data.tensors) {
      py::array_t<uint8_t> bytes({static_cast<py::ssize_t>(t.size)}, data.TensorBytes(t).data(),
                                 owner);
      tensors.append(py::make_tuple(t.name, t.dtype, py::tuple(py::cast(t.shape)), bytes));
    }
    return tensors;
  }

  std::pair<uint32_t, uint32_t> Extent() const {
    const ExpertKey extent = store_->Extent();
    return {extent.layer, extent.expert};
  }

 private:
  std::unique_ptr<SafetensorsStore> store_;
};

}  // namespace

void BindCheckpointStore(py::module_& m) {
  py::class_<PyCheckpointStore>(m, "CheckpointStore",
                                "A safetensors checkpoint's experts, read with the project's "
                                "store: exact byte ranges, XXH3 checksums verified.")
      .def(py::init<const std::string&, const std::string&>(), py::arg("directory"),
           py::arg("expert_pattern"))
      .def("tensors", &PyCheckpointStore::Tensors, py::arg("layer"), py::arg("expert"))
      .def("load", &PyCheckpointStore::Load, py::arg("layer"), py::arg("expert"),
           "Reads and verifies the expert without the GIL.")
      .def("extent", &PyCheckpointStore::Extent);
}

}  // namespace moe_router
