#include "core/store/expert_bytes.h"

#include <sys/mman.h>

#include <algorithm>
#include <new>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace moe_router {
namespace {

// Below this, the heap serves well enough and mapping would waste pages.
constexpr size_t kMappedMinimum = size_t{256} << 10;

class Pool {
 public:
  // A pooled buffer of exactly `size` bytes, or nullptr.
  uint8_t* Take(size_t size) {
    absl::MutexLock lock(&mu_);
    auto it = free_.find(size);
    if (it == free_.end() || it->second.empty()) return nullptr;
    uint8_t* p = it->second.back();
    it->second.pop_back();
    pooled_ -= size;
    return p;
  }

  // Keeps `p` if there is room; false if the caller must unmap it.
  bool Give(uint8_t* p, size_t size) {
    absl::MutexLock lock(&mu_);
    if (pooled_ + size > kExpertBytesPoolLimit) return false;
    free_[size].push_back(p);
    pooled_ += size;
    return true;
  }

  size_t pooled() {
    absl::MutexLock lock(&mu_);
    return pooled_;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<size_t, std::vector<uint8_t*>> free_ ABSL_GUARDED_BY(mu_);
  size_t pooled_ ABSL_GUARDED_BY(mu_) = 0;
};

// Never destroyed: buffers may be freed during static destruction.
Pool& GetPool() {
  static Pool* pool = new Pool;
  return *pool;
}

}  // namespace

ExpertBytes AllocateExpertBytes(size_t size) {
  size = std::max<size_t>(size, 1);
  if (size < kMappedMinimum) return ExpertBytes(new uint8_t[size], {size});
  if (uint8_t* p = GetPool().Take(size)) return ExpertBytes(p, {size});
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return ExpertBytes(static_cast<uint8_t*>(p), {size});
}

void ExpertBytesDeleter::operator()(uint8_t* p) const {
  if (p == nullptr) return;
  if (size < kMappedMinimum) {
    delete[] p;
  } else if (!GetPool().Give(p, size)) {
    munmap(p, size);
  }
}

size_t ExpertBytesPooled() { return GetPool().pooled(); }

}  // namespace moe_router
