#ifndef MOE_ROUTER_CORE_PAGING_PAGING_OPTIONS_H_
#define MOE_ROUTER_CORE_PAGING_PAGING_OPTIONS_H_

#include <cstdint>

namespace moe_router {

/// How a model's paging pool runs: part of its configuration, apart from the
/// pool so that a configuration does not bring the pool along.
struct PagingPoolOptions {
  uint32_t threads = 2;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_PAGING_PAGING_OPTIONS_H_
