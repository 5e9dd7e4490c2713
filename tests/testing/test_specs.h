#ifndef MOE_ROUTER_TESTS_TESTING_TEST_SPECS_H_
#define MOE_ROUTER_TESTS_TESTING_TEST_SPECS_H_

#include <cstdint>
#include <string>

#include "moe_router/v1/moe_router.pb.h"

namespace moe_router::testing {

/// A small model for service tests: 8 experts, top-2, `layers` layers, on a
/// synthetic store of `expert_bytes` experts with room for `budget_experts`.
v1::ModelSpec SyntheticSpec(const std::string& name, uint32_t layers, uint64_t expert_bytes,
                            uint32_t budget_experts);

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_TEST_SPECS_H_
