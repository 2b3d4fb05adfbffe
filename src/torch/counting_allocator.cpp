// See include/memscale/torch/counting_allocator.hpp.
#include "memscale/torch/counting_allocator.hpp"
#include "memscale/torch/counted_allocate.hpp"

#include <c10/core/Allocator.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace memscale::memory {
namespace {

// Each session keeps its own figures: a block counts in a session only if it was allocated
// after the session began (blocks carry their allocation sequence number), so freeing an
// older block -- even one an earlier session counted -- never lowers a later session's count.
struct Session {
  std::int64_t id;
  std::uint64_t first_seq;  // sequence number of the first block this session counts
  std::int64_t current = 0;
  std::int64_t peak = 0;
  std::int64_t allocations = 0;
  std::int64_t frees = 0;
};

// Installed with the highest priority so that no registered allocator outranks it, and the
// previous allocator is restored with the same priority.
constexpr std::uint8_t kPriority = std::numeric_limits<std::uint8_t>::max();

class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    c10::Allocator* inner = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      inner = inner_;
    }
    TORCH_CHECK(inner != nullptr, "memscale counting allocator used while not installed");
    return count(inner->allocate(n), n);
  }

  /// A block from another allocator (allocate_counted), counted when a session is live.
  c10::DataPtr allocate_from(c10::Allocator& allocator, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (sessions_.empty()) return allocator.allocate(n);
    }
    return count(allocator.allocate(n), n);
  }

  /// Registers `block` with the live sessions; the returned pointer frees it through free_block.
  c10::DataPtr count(c10::DataPtr block, size_t n) {
    void* data = block.get();
    const c10::Device device = block.device();
    if (data == nullptr) {  // zero-byte allocations: nothing to count or free
      return block;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The inner DataPtr (with its own context and deleter) is kept per pointer and
      // destroyed in free_block, which is what actually releases the memory.
      blocks_.emplace(data, Block{std::move(block), n, next_seq_++});
      for (auto& s : sessions_) {
        s.current += static_cast<std::int64_t>(n);
        s.peak = std::max(s.peak, s.current);
        ++s.allocations;
      }
    }
    // data == context: a "simple" data pointer, so raw_allocate/raw_deallocate work too.
    return {data, data, &CountingAllocator::free_block, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &CountingAllocator::free_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static CountingAllocator& instance() {
    // Never destroyed: blocks it handed out may be freed at any time, even at exit.
    static auto* allocator = new CountingAllocator();
    return *allocator;
  }

  std::int64_t begin() {
    std::lock_guard<std::mutex> lock(install_mu_);
    std::lock_guard<std::mutex> inner_lock(mu_);
    if (sessions_.empty()) {
      c10::Allocator* previous = c10::GetAllocator(c10::DeviceType::CPU);
      TORCH_CHECK(previous != this, "memscale counting allocator is already installed");
      inner_ = previous;
      c10::SetAllocator(c10::DeviceType::CPU, this, kPriority);
    }
    const std::int64_t id = next_id_++;
    sessions_.push_back(Session{id, next_seq_});
    return id;
  }

  void end(std::int64_t id) {
    std::lock_guard<std::mutex> lock(install_mu_);
    std::lock_guard<std::mutex> inner_lock(mu_);
    auto it = std::find_if(sessions_.begin(), sessions_.end(), [&](const Session& s) { return s.id == id; });
    if (it == sessions_.end()) return;
    sessions_.erase(it);
    if (sessions_.empty()) {
      c10::SetAllocator(c10::DeviceType::CPU, inner_, kPriority);
      // inner_ stays set: blocks still in flight are freed by destroying their inner DataPtr,
      // and a racing allocate() that read `this` before the swap can still be served.
    }
  }

  AllocationStats stats(std::int64_t id) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Session* s = find(id);
    TORCH_CHECK(s != nullptr, "memscale: counting session ", id, " is closed");
    return AllocationStats{s->current, s->peak, s->allocations, s->frees};
  }

  void reset_peak(std::int64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    Session* s = const_cast<Session*>(find(id));
    TORCH_CHECK(s != nullptr, "memscale: counting session ", id, " is closed");
    s->peak = s->current;
  }

  bool installed() const { return c10::GetAllocator(c10::DeviceType::CPU) == this; }

 private:
  struct Block {
    c10::DataPtr inner;
    size_t bytes;
    std::uint64_t seq;  // allocation order, to tell which sessions counted this block
  };

  static void free_block(void* data) { instance().release(data); }

  void release(void* data) {
    c10::DataPtr inner;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = blocks_.find(data);
      if (it == blocks_.end()) return;  // not ours: nothing was counted for it
      inner = std::move(it->second.inner);
      for (auto& s : sessions_) {
        if (it->second.seq >= s.first_seq) {
          s.current -= static_cast<std::int64_t>(it->second.bytes);
          ++s.frees;
        }
      }
      blocks_.erase(it);
    }
    // `inner` is destroyed here, outside the lock: its deleter returns the memory.
  }

  const Session* find(std::int64_t id) const {
    for (const auto& s : sessions_)
      if (s.id == id) return &s;
    return nullptr;
  }

  mutable std::mutex mu_;   // counts, blocks, sessions, inner_
  std::mutex install_mu_;   // serializes install/uninstall
  c10::Allocator* inner_ = nullptr;
  std::unordered_map<void*, Block> blocks_;
  std::vector<Session> sessions_;
  std::uint64_t next_seq_ = 0;
  std::int64_t next_id_ = 0;
};

}  // namespace

CountingSession::CountingSession() : id_(CountingAllocator::instance().begin()) {}

CountingSession::~CountingSession() { close(); }

AllocationStats CountingSession::stats() const {
  TORCH_CHECK(id_ >= 0, "memscale: counting session is closed");
  return CountingAllocator::instance().stats(id_);
}

void CountingSession::reset_peak() {
  TORCH_CHECK(id_ >= 0, "memscale: counting session is closed");
  CountingAllocator::instance().reset_peak(id_);
}

void CountingSession::close() {
  if (id_ >= 0) {
    CountingAllocator::instance().end(id_);
    id_ = -1;
  }
}

bool counting_allocator_installed() { return CountingAllocator::instance().installed(); }

c10::DataPtr allocate_counted(c10::Allocator& allocator, std::size_t n) {
  return CountingAllocator::instance().allocate_from(allocator, n);
}

}  // namespace memscale::memory
