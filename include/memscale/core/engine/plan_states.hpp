// The memory model's layer states a Plan applies (the inverse of build_plan's techniques).
#pragma once

#include <vector>

#include "memscale/core/memory_model.hpp"
#include "memscale/core/plan.hpp"

namespace memscale::engine_detail {

inline std::vector<model::LayerState> plan_states(const Plan& plan) {
  std::vector<model::LayerState> states(plan.layers.size());
  for (std::size_t l = 0; l < states.size(); ++l) {
    const LayerPlan& lp = plan.layers[l];
    states[l].checkpoint = lp.has("checkpoint");
    states[l].offload_activations = lp.has("offload_activations");
    states[l].offload_weights = lp.has("offload_weights");
    states[l].chunks = lp.has("tile") ? lp.tile_chunks : 1;
  }
  return states;
}

}  // namespace memscale::engine_detail
