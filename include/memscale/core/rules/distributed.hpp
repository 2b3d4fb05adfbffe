// Planning one rank of a torch.distributed job (docs/distributed.md). The graph's layer
// figures are already one rank's (the profiler read the shards and DDP's buckets); these
// rules say which device that rank is planned against and record it in the trace.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "memscale/core/model_graph.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale::rules {

inline constexpr const char* kPerRankRule = "distributed.per_rank";
inline constexpr const char* kSharedHostRule = "distributed.shared_host";

/// Memory of the device one rank plans against. distributed.shared_host: on a CPU-only
/// machine the ranks of one host share its RAM, so each gets 1/local_world_size of it;
/// a GPU rank has its own device.
inline std::uint64_t rank_device_bytes(const Distributed& d, std::uint64_t device_bytes, bool gpu) {
  if (gpu || !d.active() || d.local_world_size <= 1) return device_bytes;
  return device_bytes / static_cast<std::uint64_t>(d.local_world_size);
}

/// DDP's gradient buckets: gradients are copied into flattened buckets the size of all
/// gradients, resident for the whole step (a second copy unless gradient_as_bucket_view;
/// with it the buckets are the gradients, resident from the start: charged the same).
inline bool ddp_buckets(const ModelGraph& graph) { return graph.training && graph.distributed.engine == "ddp"; }

/// The trace line of a distributed graph: rule distributed.per_rank and what it charges.
inline std::string per_rank_note(const ModelGraph& graph, std::uint64_t device_bytes, bool gpu) {
  const Distributed& d = graph.distributed;
  std::uint64_t gathered = 0, kept = 0, scattered = 0;
  for (const auto& l : graph.layers) {
    gathered = std::max<std::uint64_t>(gathered, l.sharding.gathered_bytes);
    kept += l.sharding.kept_gathered_bytes;
    scattered = std::max<std::uint64_t>(scattered, l.sharding.reduce_scatter_bytes);
  }
  std::string line = std::string(kPerRankRule) + ": " + d.engine + " over " + std::to_string(d.world_size) +
                     " ranks, planning one rank against " + format_bytes(device_bytes);
  if (!gpu && d.local_world_size > 1)
    line += " (" + std::string(kSharedHostRule) + ": host RAM shared by " + std::to_string(d.local_world_size) + " local ranks)";
  if (d.engine == "fsdp2")
    line += "; per-rank shards of parameters, gradients and optimizer state; all-gather window up to " +
            format_bytes(gathered) + " per group (x2 while gathering, plus the backward prefetch), " +
            format_bytes(kept) + " kept gathered through the step, reduce-scatter input up to " +
            format_bytes(scattered);
  else if (d.engine == "ddp")
    line += std::string("; gradient buckets ") +
            (d.gradient_as_bucket_view ? "(gradients are bucket views)" : "(a flattened copy of every gradient)") +
            " resident through the step";
  return line;
}

}  // namespace memscale::rules
