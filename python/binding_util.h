// What the native module's bindings share.
#ifndef MOE_ROUTER_PYTHON_BINDING_UTIL_H_
#define MOE_ROUTER_PYTHON_BINDING_UTIL_H_

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "absl/status/status.h"

namespace moe_router {

// A failed status as a Python RuntimeError carrying its code and message.
inline void Check(const absl::Status& status) {
  if (!status.ok()) throw std::runtime_error(std::string(status.ToString()));
}

// moe_router._engine.CheckpointStore (checkpoint_binding.cc).
void BindCheckpointStore(pybind11::module_& m);

}  // namespace moe_router

#endif  // MOE_ROUTER_PYTHON_BINDING_UTIL_H_
