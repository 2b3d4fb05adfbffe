// The tier placement view of an inference plan: the tier problem a graph poses on a machine,
// and the split the plan realises per layer, costed with the tier-policy cost model.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "memscale/core/engine/setup.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/tier_search.hpp"

namespace memscale::engine_detail {

/// Compute time of one inference step: the graph's forward FLOPs, scaled to one decode
/// step (one token per sequence) when the graph has a KV cache.
inline double inference_step_compute_s(const ModelGraph& graph, const cost::Rates& rates) {
  double flops = 0;
  bool kv = false;
  for (const auto& layer : graph.layers) {
    flops += cost::layer_flops(layer, graph);
    kv |= layer.kv_cache_bytes > 0;
  }
  if (kv) flops /= static_cast<double>(std::max<std::int64_t>(graph.seq, 1));
  return flops / rates.flops_per_s;
}

/// The tier-policy problem of `graph` on this machine, with `gpu_capacity` for the device.
inline TierProblem tier_problem_of(const ModelGraph& graph, const Setup& setup, const Config& config,
                                   std::uint64_t gpu_capacity) {
  TierProblem p;
  std::uint64_t kv = 0;
  for (const auto& layer : graph.layers) {
    p.weights_bytes += layer.param_bytes + layer.buffer_bytes;
    kv += layer.kv_cache_bytes;
  }
  p.kv_cache_bytes = kv;
  p.kv_append_bytes = kv / static_cast<std::uint64_t>(std::max<std::int64_t>(graph.seq, 1));
  p.activation_bytes = setup.reservation.used ? setup.reservation.per_device_bytes : 0;
  p.gpu_capacity = gpu_capacity;
  p.cpu_capacity = setup.capacity.host;
  p.disk_capacity = setup.capacity.disk;
  p.host_to_device_bytes_per_s = setup.rates.host_to_device;
  p.disk_read_bytes_per_s = setup.rates.disk_read;
  p.disk_write_bytes_per_s = setup.rates.disk_write;
  p.compute_s = inference_step_compute_s(graph, setup.rates);
  p.fixed = config.tiers;
  // The activations between layers stay on the device (check_inference_activation_tiers):
  // the search places only what the runtime can move.
  p.fixed["activations"] = TierSplit{100.0, 0.0};
  return p;
}

/// Where each layer's KV cache lives under `states`: "none" for a layer without one
/// (training, or no attention in it), "device" unless the engine offloaded it
/// (offload_activations on an inference layer is its KV cache), else the tier the ledger
/// gave it (`offload_tier`: host first on a GPU machine, disk when host is full or
/// on a CPU-only machine). The one per-layer rule the tier report and LayerPlan.kv_tier share.
inline std::vector<std::string> kv_tiers_of(const ModelGraph& graph, const std::vector<model::LayerState>& states,
                                            const std::vector<std::string>& offload_tier) {
  std::vector<std::string> tiers(graph.layers.size(), "none");
  if (graph.training) return tiers;
  for (std::size_t l = 0; l < graph.layers.size(); ++l)
    if (graph.layers[l].kv_cache_bytes > 0) tiers[l] = states[l].offload_activations ? offload_tier[l] : "device";
  return tiers;
}

inline double percent(std::uint64_t part, std::uint64_t total) {
  return total == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(total);
}

/// The split an inference plan realises, costed (`kv_tier`: kv_tiers_of).
inline TierChoice realised_tiers(const ModelGraph& graph, const Setup& setup, const Config& config,
                                 const std::vector<model::LayerState>& states, const std::vector<std::string>& weight_tier,
                                 const std::vector<std::string>& kv_tier) {
  std::uint64_t w_total = 0, w_gpu = 0, w_host = 0, k_total = 0, k_gpu = 0, k_host = 0;
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    const auto& layer = graph.layers[l];
    const std::uint64_t w = layer.param_bytes + layer.buffer_bytes, k = layer.kv_cache_bytes;
    w_total += w;
    k_total += k;
    if (!states[l].offload_weights) w_gpu += w;
    else if (weight_tier[l] == "host") w_host += w;
    if (kv_tier[l] == "device") k_gpu += k;
    else if (kv_tier[l] == "host") k_host += k;
  }
  TierChoice c;
  c.used = true;
  c.policy.weights = w_total ? TierSplit{percent(w_gpu, w_total), percent(w_host, w_total)} : TierSplit{100.0, 0.0};
  c.policy.kv_cache = k_total ? TierSplit{percent(k_gpu, k_total), percent(k_host, k_total)} : TierSplit{100.0, 0.0};
  c.policy.activations = TierSplit{100.0, 0.0};  // on the device (check_inference_activation_tiers)
  TierProblem problem = tier_problem_of(graph, setup, config, setup.budget);
  const TierCost cost = tier_cost(problem, c.policy);
  c.compute_s = cost.compute_s;
  c.io_s = cost.io_s;
  c.total_s = cost.total_s;
  c.gpu_bytes = cost.gpu_bytes;
  c.cpu_bytes = cost.cpu_bytes;
  c.disk_bytes = cost.disk_bytes;
  return c;
}

}  // namespace memscale::engine_detail
