#include "tests/testing/cache_steps.h"

#include <algorithm>
#include <memory>

#include "gtest/gtest.h"

namespace moe_router::testing {

uint64_t ServeStep(ExpertCache& cache, uint32_t layer, std::vector<uint32_t> experts,
                   uint64_t bytes, uint32_t tokens) {
  cache.BeginStep(layer, tokens);
  ArrangeStep(cache.step_order(), experts, [&](uint32_t e) {
    return cache.IsResident({layer, e});
  });
  for (uint32_t e : experts) cache.Pin({layer, e});
  uint64_t hits = 0;
  std::vector<uint32_t> missed;
  for (uint32_t e : experts) {
    // A repeat of a miss (a batch) finds it loaded at its first use.
    if (cache.Access({layer, e}) || std::find(missed.begin(), missed.end(), e) != missed.end()) {
      ++hits;
    } else {
      missed.push_back(e);
    }
  }
  for (uint32_t e : missed) {
    EXPECT_TRUE(cache.Reserve({layer, e}, bytes, Priority::kUrgent).ok());
    auto data = std::make_shared<ExpertData>();
    data->key = {layer, e};
    data->size = bytes;
    EXPECT_TRUE(cache.Commit(std::move(data)).ok());
  }
  for (uint32_t e : experts) cache.Unpin({layer, e});
  return hits;
}

}  // namespace moe_router::testing
