// Exact accounting of CPU tensor memory: a c10::Allocator that wraps the CPU allocator
// in use and counts the bytes of every block it hands out until that block is freed.
//
// Sessions nest: the first live CountingSession installs the counting allocator with
// c10::SetAllocator (remembering the previous one), the last one to close restores it.
// Each session reports bytes relative to its own start and counts only blocks allocated
// after it began: blocks allocated before installation carry their original deleter, and
// counted blocks remember their allocation order, so freeing an older block never makes
// a session's count go wrong (no underflow); blocks allocated while counting are freed through the
// counting deleter even after uninstallation (the allocator object is never destroyed).
//
// No torch types appear here, so including this header costs nothing.
#pragma once

#include <cstdint>

namespace memscale::memory {

/// Bytes seen by one session, relative to the moment it started (or last reset_peak).
struct AllocationStats {
  std::int64_t current_bytes = 0;  ///< allocated minus freed since the session started
  std::int64_t peak_bytes = 0;     ///< highest current_bytes since start / reset_peak
  std::int64_t allocations = 0;    ///< number of blocks allocated since start
  std::int64_t frees = 0;          ///< number of counted blocks freed since start
};

/// RAII scope of exact CPU allocation counting. Not copyable; close() is idempotent.
class CountingSession {
 public:
  CountingSession();
  ~CountingSession();
  CountingSession(const CountingSession&) = delete;
  CountingSession& operator=(const CountingSession&) = delete;

  /// Current figures of this session.
  AllocationStats stats() const;
  /// Make the peak equal to the current bytes (to measure the peak of a later span).
  void reset_peak();
  /// End the session; the allocator is restored when no session is left.
  void close();
  bool closed() const { return id_ < 0; }

 private:
  std::int64_t id_;
};

/// Whether the counting allocator is the CPU allocator right now.
bool counting_allocator_installed();

}  // namespace memscale::memory
