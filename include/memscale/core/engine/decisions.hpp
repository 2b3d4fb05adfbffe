// What the engine records while it decides: per-layer rule ids and reasons, rejected
// alternatives, the trace, and where offloaded bytes go (host first, disk when host is
// full: deeper tiers last).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "memscale/core/cost_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/rules/rule.hpp"

namespace memscale::engine_detail {

struct DecisionLog {
  std::vector<std::vector<std::pair<std::string, std::string>>> layer_rules;  ///< (rule id, reason) per layer
  std::vector<std::string> weight_tier, activation_tier;                     ///< device|host|disk per layer
  std::vector<Rejection> rejected;
  std::vector<std::string> trace;

  explicit DecisionLog(std::size_t n) : layer_rules(n), weight_tier(n, "device"), activation_tier(n, "device") {}

  void decide(std::size_t layer, std::string rule, std::string reason) {
    layer_rules[layer].emplace_back(std::move(rule), std::move(reason));
  }
  void reject(const Layer& layer, rules::Technique t, std::string rule, std::string reason) {
    rejected.push_back({layer.name, rules::plan_name(t), std::move(rule), std::move(reason)});
  }
};

/// Room left on the tiers below the device. place() says where `bytes` would go without
/// taking the room; take() takes it.
struct TierLedger {
  bool gpu = false;
  std::uint64_t host_capacity = 0, disk_capacity = 0, host_used = 0, disk_used = 0;

  explicit TierLedger(bool on_gpu, const cost::TierCapacity& c)
      : gpu(on_gpu), host_capacity(c.host), disk_capacity(c.disk) {}

  std::optional<std::string> place(std::uint64_t bytes) const {
    if (gpu && host_used + bytes <= host_capacity) return std::string("host");
    if (disk_used + bytes <= disk_capacity) return std::string("disk");
    return std::nullopt;
  }
  void take(const std::string& tier, std::uint64_t bytes) { (tier == "host" ? host_used : disk_used) += bytes; }

  std::string describe() const {
    return gpu ? "host " + format_bytes(host_capacity - host_used) + " and disk " + format_bytes(disk_capacity - disk_used) + " free"
               : "disk " + format_bytes(disk_capacity - disk_used) + " free";
  }
};

/// Bytes a technique sends to the next tier for `layer` under `state` (after the change).
inline std::uint64_t offloaded_bytes(const Layer& layer, rules::Technique t, const model::LayerState& state,
                                     const model::StepContext& step) {
  if (t == rules::Technique::offload_weights) {
    // Inference pages parameters only; buffers stay on the device (model::infer_terms).
    if (!step.training) return layer.param_bytes;
    return layer.param_bytes + layer.buffer_bytes + layer.grad_bytes + layer.optimizer_bytes;
  }
  if (t == rules::Technique::offload_activations) {
    if (!step.training) return layer.kv_cache_bytes;
    return model::u64(model::train_terms(layer, state, step).activation_window);
  }
  return 0;
}

}  // namespace memscale::engine_detail
