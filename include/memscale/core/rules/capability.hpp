// What the runtime can apply: the profiler records, per layer, the techniques the runtime
// cannot apply to it in this model and call convention (Layer::cannot, with the reason).
// The engine plans only within them, so every plan it returns can be applied.
#pragma once

#include "memscale/core/model_graph.hpp"
#include "memscale/core/rules/rule.hpp"

namespace memscale::rules {

/// Eligible unless the profiler recorded that the runtime cannot apply `t` to `layer`.
inline Candidate capability_rule(const Layer& layer, Technique t) {
  const auto it = layer.cannot.find(plan_name(t));
  if (it == layer.cannot.end()) {
    Candidate c;
    c.eligible = true;
    return c;
  }
  return reject("capability.unsupported", "the runtime cannot apply it here: " + it->second);
}

}  // namespace memscale::rules
