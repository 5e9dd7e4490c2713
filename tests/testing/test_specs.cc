#include "tests/testing/test_specs.h"

namespace moe_router::testing {

v1::ModelSpec SyntheticSpec(const std::string& name, uint32_t layers, uint64_t expert_bytes,
                            uint32_t budget_experts) {
  v1::ModelSpec spec;
  spec.set_name(name);
  spec.set_num_layers(layers);
  spec.set_num_experts(8);
  spec.set_top_k(2);
  spec.set_budget_bytes(budget_experts * expert_bytes);
  spec.mutable_synthetic()->set_expert_bytes(expert_bytes);
  return spec;
}

}  // namespace moe_router::testing
