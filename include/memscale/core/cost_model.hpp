// What techniques cost in time, and the defaults the engine assumes where Hardware
// leaves a rate at 0 (docs/memory-model.md#defaults). Costs only order the candidates
// of one rule family ("cheapest per byte saved first"); they never decide feasibility.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "memscale/core/hardware.hpp"
#include "memscale/core/model_graph.hpp"

namespace memscale::cost {

/// Defaults, documented in docs/memory-model.md#defaults.
inline constexpr double kDefaultGpuFlopsPerS = 50e12;       ///< sustained dense fp16/bf16 on a datacenter GPU
inline constexpr double kDefaultCpuFlopsPerS = 0.1e12;      ///< a few AVX2/AVX-512 cores
inline constexpr double kDefaultHostToDeviceBytesPerS = 16e9;  ///< PCIe 4.0 x16, achieved
inline constexpr double kDefaultDiskReadBytesPerS = 2e9;    ///< NVMe SSD, sequential
inline constexpr double kDefaultDiskWriteBytesPerS = 1e9;
/// Host memory streaming by one or two cores: the host optimizer step of offloaded layers,
/// and the weight traffic of tiling on a CPU-only machine (11-15 GB/s measured, 1 thread).
inline constexpr double kHostMemoryBytesPerS = 10e9;
inline constexpr double kDefaultGpuMemoryBytesPerS = 2e12;  ///< HBM of a datacenter GPU (A100/H100 PCIe)
/// Fixed cost of one transfer (launch, synchronisation, pager bookkeeping): keeps the
/// engine from paging many tiny layers (norms, biases) before a few large ones.
inline constexpr double kTransferLatencyS = 20e-6;
/// Share of host RAM the engine lets offloaded tensors use when no pinned limit is known:
/// the rest stays for the process itself, the data loader and the OS.
inline constexpr double kHostOffloadShare = 0.5;

/// Rates of the machine a plan is made for.
struct Rates {
  bool gpu = false;  ///< the planning device is a CUDA device (else host RAM is the device)
  double flops_per_s = kDefaultCpuFlopsPerS;
  double host_to_device = kDefaultHostToDeviceBytesPerS;
  double disk_read = kDefaultDiskReadBytesPerS;
  double disk_write = kDefaultDiskWriteBytesPerS;
  double memory = kHostMemoryBytesPerS;  ///< the planning device's own memory bandwidth
};

inline double or_default(std::uint64_t value, double fallback) {
  return value > 0 ? static_cast<double>(value) : fallback;
}

inline Rates rates_of(const Hardware& hw) {
  Rates r;
  r.gpu = hw.gpu_count() > 0;
  r.flops_per_s = or_default(hw.flops_per_s, r.gpu ? kDefaultGpuFlopsPerS : kDefaultCpuFlopsPerS);
  r.host_to_device = or_default(hw.host_to_device_bytes_per_s, kDefaultHostToDeviceBytesPerS);
  r.disk_read = or_default(hw.disk_read_bytes_per_s, kDefaultDiskReadBytesPerS);
  r.disk_write = or_default(hw.disk_write_bytes_per_s, kDefaultDiskWriteBytesPerS);
  r.memory = r.gpu ? kDefaultGpuMemoryBytesPerS : kHostMemoryBytesPerS;
  return r;
}

/// Room for offloaded tensors below the planning device. On a GPU machine the next tier is
/// host RAM (the pinned limit when known, else kHostOffloadShare of available RAM), then
/// disk; on a CPU-only machine host RAM *is* the device, so the next tier is disk.
/// Disk capacity is the offload directory's free space; 0 there means unknown and is
/// treated as unlimited (the plan's trace says so).
struct TierCapacity {
  std::uint64_t host = 0;
  std::uint64_t disk = 0;
  bool disk_known = false;
};

inline TierCapacity capacities_of(const Hardware& hw) {
  TierCapacity c;
  if (hw.gpu_count() > 0)
    c.host = hw.pinned_limit_bytes > 0
                 ? hw.pinned_limit_bytes
                 : static_cast<std::uint64_t>(static_cast<double>(hw.host_available_bytes) * kHostOffloadShare);
  c.disk_known = hw.offload_dir_free_bytes > 0;
  c.disk = c.disk_known ? hw.offload_dir_free_bytes : std::numeric_limits<std::uint64_t>::max() / 4;
  return c;
}

/// Bytes of one element of `dtype` (graph.dtype values).
inline std::uint64_t dtype_bytes(const std::string& dtype) {
  if (dtype == "float64") return 8;
  if (dtype == "float16" || dtype == "bfloat16") return 2;
  if (dtype == "int8") return 1;
  return 4;
}

/// Forward FLOPs of a layer: the profiled figure, else 2 x parameters x tokens (a dense
/// layer's multiply-adds), else one FLOP per saved element, so an unknown layer never
/// looks free to recompute.
inline double layer_flops(const Layer& layer, const ModelGraph& graph) {
  if (layer.flops > 0) return static_cast<double>(layer.flops);
  const double elem = static_cast<double>(dtype_bytes(graph.dtype));
  const double tokens = static_cast<double>(std::max<std::int64_t>(1, std::max<std::int64_t>(graph.batch, 1) *
                                                                        std::max<std::int64_t>(graph.seq, 1)));
  const double dense = 2.0 * (static_cast<double>(layer.param_bytes) / elem) * tokens;
  const double per_element = static_cast<double>(layer.activation_bytes + layer.transient_bytes) / elem;
  return std::max({dense, per_element, 1.0});
}

}  // namespace memscale::cost
