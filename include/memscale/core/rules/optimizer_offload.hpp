// Optimizer offload rules: keep the optimizer state (level 1), then the gradients too
// (level 2), then also page weights per layer (level 3) on the next tier (pinned host with a GPU, the disk tier on a CPU-only machine),
// streamed window by window by memscale.optim.OffloadedOptimizer. Tried only after the
// per-layer techniques (recompute, tiling, activation and weight offload) cannot fit the
// budget: the state moves every step whatever the budget, so it comes last; of the two
// kinds the state goes first (it frees factor x the gradient bytes for the same traffic per
// byte). Applies only to a graph whose runtime can stream its optimizer
// (graph.optimizer_offloadable: the user handed wrap the optimizer object).
// Level 3 lets the greedy page the weights of single layers (offload_weights, cost per byte
// saved by weight_offload_rule: two reads per step, forward then backward, exposed beyond
// the compute the prefetch overlaps, and the gradient written): the training pager keeps a
// paged layer resident only inside its window and the offloaded step updates its home copy,
// which needs the layer's state and gradient streamed too (train_terms: a paged layer keeps
// nothing on the device). So it comes after level 2, never before. Level 4 also gives up the
// step's overlap: one window at a time (read, step, written back before the next is read)
// instead of three (the next one prefetched, the previous one being written), every byte of
// tier traffic exposed; last, because it is the slowest.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "memscale/core/cost_model.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/rules/rule.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale::rules {

/// One level of optimizer offload and what it costs. `applies` false: `reason` says why not.
struct OptimizerOffload {
  bool applies = false;
  bool gradients = false;            ///< level 2: the gradients move too
  bool weights = false;              ///< level 3: layers' weights may be paged as well
  bool serial = false;               ///< level 4: the step holds one window, without prefetch
  std::string rule, reason, tier;    ///< tier: host|disk
  std::uint64_t moved_bytes = 0;     ///< state (+ gradients) kept on the tier
  std::uint64_t window_bytes = 0;    ///< StepContext::optimizer_window_bytes
  std::uint64_t in_flight_bytes = 0; ///< StepContext::gradients_in_flight_bytes
  double seconds_per_step = 0.0;     ///< tier traffic per step at the tier's bandwidths
};

/// Largest trainable tensor: one window of the offloaded step (OffloadedOptimizer's default
/// window is one parameter). Unknown sizes fall back to the largest layer's gradients (an
/// upper bound of its largest tensor).
inline std::uint64_t largest_trainable_tensor(const ModelGraph& graph) {
  std::uint64_t w = graph.largest_param_bytes;
  for (const std::uint64_t b : graph.trainable_param_bytes) w = std::max(w, b);
  if (w == 0)
    for (const auto& layer : graph.layers) w = std::max(w, layer.grad_bytes);
  return w;
}

/// optimizer_offload.state (level 1) | optimizer_offload.gradients (level 2) |
/// optimizer_offload.weights (level 3: `weights`, with gradients) | optimizer_offload.serial_step
/// (level 4: `serial`, with weights) | optimizer_offload.not_offloadable | optimizer_offload.no_state | optimizer_offload.data_parallel |
/// optimizer_offload.tier_full
inline OptimizerOffload optimizer_offload_rule(const ModelGraph& graph, const model::StepContext& step,
                                               const cost::Rates& rates, const cost::TierCapacity& capacity,
                                               bool gradients, bool weights = false, bool serial = false) {
  OptimizerOffload o;
  weights = weights || serial;
  gradients = gradients || weights;
  o.serial = serial;
  o.gradients = gradients;
  o.weights = weights;
  o.tier = rates.gpu ? "host" : "disk";
  if (!graph.training || !graph.optimizer_offloadable) {
    o.rule = "optimizer_offload.not_offloadable";
    o.reason = "the runtime cannot stream this optimizer (pass the torch optimizer object to wrap)";
    return o;
  }
  std::uint64_t state = 0, grads = 0;
  for (const auto& layer : graph.layers) state += layer.optimizer_bytes, grads += layer.grad_bytes;
  if (state == 0) {
    o.rule = "optimizer_offload.no_state";
    o.reason = "optimizer \"" + graph.optimizer + "\" keeps no state";
    return o;
  }
  if (gradients && step.data_parallel) {
    o.rule = "optimizer_offload.data_parallel";
    o.reason = "data-parallel replicas reduce gradients in buckets on the device";
    return o;
  }
  o.moved_bytes = state + (gradients ? grads : 0);
  const std::uint64_t room = rates.gpu ? capacity.host : capacity.disk;
  if ((rates.gpu || capacity.disk_known) && o.moved_bytes > room) {
    o.rule = "optimizer_offload.tier_full";
    o.reason = "the " + o.tier + " tier has " + format_bytes(room) + " for " + format_bytes(o.moved_bytes);
    return o;
  }
  const std::uint64_t w = largest_trainable_tensor(graph);
  const std::uint64_t factor = optimizer_state_factor(graph.optimizer);
  // Three windows (stepping, next read, previous written; serial: the one stepping) and one
  // window's temporaries.
  o.window_bytes = (serial ? 1 : 3) * (factor * w + (gradients ? w : 0)) +
                   static_cast<std::uint64_t>(step.optimizer_transient * static_cast<double>(w));
  // Level 3: the step of a paged layer's parameters holds that layer (loaded, updated,
  // written home) and the pager may keep what its resident limit has room for: the window
  // of forward and backward, at most the largest layer's weights times (1 + prefetch).
  std::uint64_t largest_layer = 0;
  for (const auto& layer : graph.layers) largest_layer = std::max(largest_layer, layer.param_bytes + layer.buffer_bytes);
  if (weights) o.window_bytes += (1 + step.prefetch_n_ahead) * largest_layer;
  o.in_flight_bytes = gradients ? 2 * w : 0;  // the one being stored, the previous one being written
  // Every moved byte is written once and read once per step.
  const double read = rates.gpu ? rates.host_to_device : rates.disk_read;
  const double write = rates.gpu ? rates.host_to_device : rates.disk_write;
  o.seconds_per_step = static_cast<double>(o.moved_bytes) / read + static_cast<double>(o.moved_bytes) / write;
  const double per_gib = o.seconds_per_step / (static_cast<double>(o.moved_bytes) / static_cast<double>(1ull << 30));
  o.applies = true;
  o.rule = serial ? "optimizer_offload.serial_step" : weights ? "optimizer_offload.weights" : gradients ? "optimizer_offload.gradients" : "optimizer_offload.state";
  o.reason = std::string(serial    ? "no plan with a prefetching offloaded step fits"
                         : weights ? "no plan with the optimizer state and gradients offloaded fits"
                                   : "no plan of per-layer techniques fits") +
             "; keep the optimizer state" + std::string(gradients ? " and the gradients" : "") + " (" +
             format_bytes(o.moved_bytes) + ") on the " + o.tier + " tier, streamed one window at a time" +
             (serial ? ", each read after the previous one is written (no overlap)" : "") + " (at most " +
             format_bytes(o.window_bytes) + " resident" + (weights ? ", a paged layer's weights included" : "") +
             "): " + format_seconds(o.seconds_per_step) + " of tier traffic per step, " + format_seconds(per_gib) +
             " per GiB saved" +
             (weights ? "; layers marked offload_weights page their weights from the " + o.tier +
                            " tier (forward order, then reverse), the step updating their home copy"
                      : "");
  return o;
}

/// The step context with `o` applied (a no-op when it does not apply).
inline void apply_optimizer_offload(const OptimizerOffload& o, model::StepContext& step) {
  if (!o.applies) return;
  step.offload_optimizer_state = true;
  step.offload_gradients = o.gradients;
  step.optimizer_window_bytes = o.window_bytes;
  step.gradients_in_flight_bytes = o.in_flight_bytes;
}

}  // namespace memscale::rules
