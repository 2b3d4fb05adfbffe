// Seconds of extra step time each training technique costs a layer: the one copy of the
// formulas the rules order candidates by (cost per byte saved) and the plan's modelled
// cost adds up (engine/plan_cost.hpp), so the greedy and the exact solver minimise the
// same figure.
#pragma once

#include <algorithm>
#include <cstdint>

#include "memscale/core/cost_model.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"

namespace memscale::rules {

/// Seconds of transfer not hidden behind `overlap_s` of compute.
inline double exposed(double transfer_s, double overlap_s) { return std::max(0.0, transfer_s - overlap_s); }

/// Bandwidth from the planning device to its next tier: PCIe on a GPU machine, the disk
/// on a CPU-only machine (where host RAM is the device).
inline double next_tier_read(const cost::Rates& r) { return r.gpu ? r.host_to_device : r.disk_read; }
inline double next_tier_write(const cost::Rates& r) { return r.gpu ? r.host_to_device : r.disk_write; }

/// One extra forward of the layer (checkpointing, or the first split of a tile).
inline double recompute_seconds(const Layer& layer, const ModelGraph& graph, const cost::Rates& rates) {
  return cost::layer_flops(layer, graph) / rates.flops_per_s;
}

/// Compute a transfer can hide behind: on a GPU the copy engines run beside the kernels; on
/// a CPU-only machine the writer/reader threads copy on the cores the step computes on, so
/// nothing is hidden (measured: plan_quality, disk-offload plans slower than their model).
inline double overlappable(double compute_s, const cost::Rates& r) { return r.gpu ? compute_s : 0.0; }

/// Training: `kept` bytes out during forward and back for backward, hidden behind the
/// layer's forward and backward compute (about 3x its forward FLOPs) on a GPU.
inline double activation_offload_seconds(const Layer& layer, std::int64_t kept, const ModelGraph& graph,
                                         const model::StepContext& step, const cost::Rates& rates) {
  const double flops = cost::layer_flops(layer, graph) * step.step_flops_share;
  const double transfer = static_cast<double>(kept) / next_tier_write(rates) + static_cast<double>(kept) / next_tier_read(rates);
  return exposed(transfer, overlappable(3.0 * flops / rates.flops_per_s, rates)) + 2 * cost::kTransferLatencyS;
}

/// Training: weights in for forward and again for backward, gradients out; the layer's
/// optimizer step then runs on the host.
inline double weight_offload_seconds(const Layer& layer, const ModelGraph& graph, const model::StepContext& step,
                                     const cost::Rates& rates) {
  const std::int64_t weights = model::s64(layer.param_bytes) + model::s64(layer.buffer_bytes);
  const double compute = cost::layer_flops(layer, graph) * step.step_flops_share / rates.flops_per_s;
  const double transfer = 2.0 * static_cast<double>(weights) / next_tier_read(rates) +
                          static_cast<double>(layer.grad_bytes) / next_tier_write(rates);
  const double host_step = static_cast<double>(weights + model::s64(layer.optimizer_bytes)) / cost::kHostMemoryBytesPerS;
  return exposed(transfer, overlappable(3.0 * compute, rates)) + host_step + 3 * cost::kTransferLatencyS;
}

}  // namespace memscale::rules
