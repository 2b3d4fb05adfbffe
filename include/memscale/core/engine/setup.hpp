// Everything the engine derives from (graph, hardware, config) before deciding anything:
// the planning device and its budget, the step context of the memory model, rates and
// tier capacities, the resolved overrides and the pinned hot set.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/cost_model.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/reservation.hpp"
#include "memscale/core/rules/distributed.hpp"
#include "memscale/core/rules/offload.hpp"
#include "memscale/core/rules/overrides.hpp"

namespace memscale {

/// Extra inputs of plan() beyond the three documents.
struct PlanOptions {
  /// A fitted reservation safety factor (calibrate_safety_factor); replaces
  /// Config.reservation.safety_factor for inference plans and is recorded in the plan.
  std::optional<Calibration> calibration;
};

namespace engine_detail {

struct Setup {
  std::uint64_t device_bytes = 0;  ///< memory of one planning device
  std::int64_t device_count = 1;   ///< data-parallel replicas
  std::uint64_t budget = 0;        ///< per device
  cost::Rates rates;
  cost::TierCapacity capacity;
  model::StepContext step;
  Reservation reservation;  ///< inference only: on the device (check_inference_activation_tiers)
  rules::ResolvedOverrides overrides;
  std::vector<std::string> pinned;  ///< per layer: why its weights are pinned ("" = not)
};

/// Memory of one planning device: the smallest GPU (every data-parallel replica must fit),
/// or host RAM on a CPU-only machine.
inline std::uint64_t planning_device_bytes(const Hardware& hw) {
  std::uint64_t smallest = 0;
  bool any = false;
  for (const auto& d : hw.devices)
    if (d.kind == "cuda") smallest = any ? std::min(smallest, d.total_bytes) : d.total_bytes, any = true;
  return any ? smallest : hw.host_available_bytes;
}

inline void validate_graph(const ModelGraph& graph) {
  if (graph.layers.empty())
    throw ConfigError("graph.layers: empty; the engine plans per layer, profile a model with at least one layer");
  for (std::size_t l = 0; l < graph.layers.size(); ++l)
    if (graph.layers[l].index != static_cast<std::int64_t>(l))
      throw ConfigError("graph.layers[" + std::to_string(l) + "].index: got " + std::to_string(graph.layers[l].index) +
                        ", expected " + std::to_string(l) + " (layers are listed in execution order)");
}

inline Setup make_setup(const ModelGraph& graph, const Hardware& hw, const Config& config, const PlanOptions& options) {
  validate_graph(graph);
  Setup s;
  s.device_bytes = rules::rank_device_bytes(graph.distributed, planning_device_bytes(hw), hw.gpu_count() > 0);
  s.device_count = std::max<std::int64_t>(1, static_cast<std::int64_t>(hw.gpu_count()));
  if (config.memory_budget.kind != MemoryBudget::Kind::bytes && s.device_bytes == 0)
    throw ConfigError(std::string("memory_budget: ") +
                      (config.memory_budget.kind == MemoryBudget::Kind::fraction ? "a fraction" : "the default") +
                      " needs the device memory, but the hardware reports 0 bytes (no CUDA device total_bytes, "
                      "host_available_bytes 0); give memory_budget in bytes, e.g. \"8GiB\"");
  s.budget = config.resolve_budget(s.device_bytes);
  if (s.budget == 0)
    throw ConfigError("memory_budget: resolves to 0 bytes on a device of " + format_bytes(s.device_bytes) +
                      "; give a budget greater than 0");
  s.rates = cost::rates_of(hw);
  s.capacity = cost::capacities_of(hw);
  s.step.training = graph.training;
  s.step.prefetch_n_ahead = config.offload.prefetch_n_ahead;
  // The optimizer step's temporaries depend on how it steps; a per-tensor step of a graph
  // without largest_param_bytes keeps the conservative foreach figure.
  const std::string impl = model::resolved_optimizer_impl(graph.optimizer_impl, hw.gpu_count() > 0);
  s.step.optimizer_transient =
      graph.training && impl != "fused" ? model::optimizer_transient_factor(graph.optimizer) : 0.0;
  if (graph.training && impl == "per_tensor" && (graph.largest_param_bytes > 0 || !graph.trainable_param_bytes.empty())) {
    s.step.optimizer_transient = 0.0;
    s.step.optimizer_workspace_bytes = model::per_tensor_optimizer_workspace(graph.optimizer, graph.largest_param_bytes,
                                                                             graph.trainable_param_bytes);
  }
  s.step.data_parallel = (graph.training && s.device_count > 1) || rules::ddp_buckets(graph);
  // The BLAS workspace is resident like the inputs once the first product ran (the peak
  // report's "input" term carries both). cuBLAS keeps one per thread and stream: training
  // pays it twice, for the caller's thread and autograd's device thread running backward.
  s.step.input_bytes = graph.input_bytes + hw.workspace_bytes() * (graph.training ? 2 : 1);
  s.step.element_bytes = cost::dtype_bytes(graph.dtype);
  if (!graph.training) {
    check_inference_activation_tiers(config.tiers, "tiers");
    s.reservation = activation_reservation(graph, hw, config.reservation, s.device_count, options.calibration);
    bool kv = false;
    for (const auto& layer : graph.layers) kv |= layer.kv_cache_bytes > 0;
    if (kv) s.step.step_flops_share = 1.0 / static_cast<double>(std::max<std::int64_t>(graph.seq, 1));
    s.step.reservation_bytes = s.reservation.per_device_bytes;
  }
  s.overrides = rules::resolve_overrides(graph, config);
  s.pinned = rules::hot_set(graph, config.offload);
  return s;
}

}  // namespace engine_detail
}  // namespace memscale
