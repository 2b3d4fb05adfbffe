// Memory that code takes from an allocator of its own, counted like the CPU allocator's.
//
// track_memory's counting allocator sees what goes through c10's CPU allocator. The pager
// takes its resident layers' memory from page mappings of its own (returned to the OS the
// moment a layer is evicted, see pager_storage.cpp); allocate_counted makes every live
// counting session count those blocks exactly as if the CPU allocator had handed them out.
#pragma once

#include <cstddef>

#include <c10/core/Allocator.h>

namespace memscale::memory {

/// `allocator.allocate(n)`, counted by every live CountingSession until the block is freed.
/// Without a live session it is just `allocator.allocate(n)`.
c10::DataPtr allocate_counted(c10::Allocator& allocator, std::size_t n);

}  // namespace memscale::memory
