// Which solver plans a training step: Config.solver "greedy" and "optimal" are followed;
// "auto" (the default) takes the exact solver up to 256 layers, where a profiled training
// chain (weights resident) is solved in milliseconds, and the greedy above, where the exact
// search takes seconds (docs/solver.md). A search that passes the exact solver's work limit
// yields the greedy's plan, or the least-peak plan when the greedy's does not fit.
#pragma once

#include <cstddef>
#include <string>

#include "memscale/core/config.hpp"

namespace memscale::rules {

/// The deepest chain "auto" gives to the exact solver (the 1,000-layer chain takes seconds).
inline constexpr std::size_t kAutoExactMaxLayers = 256;

struct SolverDecision {
  bool exact = false;          ///< run the exact solver (engine/optimal_plan.hpp)
  std::string rule, reason;    ///< empty for an explicit Config.solver that needs no comment
};

/// solver.auto_exact | solver.auto_greedy (Config.solver "auto"); greedy/optimal as asked.
inline SolverDecision solver_rule(Solver asked, bool training, std::size_t layers) {
  SolverDecision d;
  if (!training) return d;  // inference plans have their own path (engine.hpp)
  if (asked == Solver::greedy) return d;
  if (asked == Solver::optimal) {
    d.exact = true;
    return d;
  }
  if (layers > kAutoExactMaxLayers) {
    d.rule = "solver.auto_greedy";
    d.reason = "solver auto: the greedy plans this step: " + std::to_string(layers) + " layers, above the " +
               std::to_string(kAutoExactMaxLayers) + " the exact solver plans in milliseconds (solver \"optimal\" "
               "forces it)";
    return d;
  }
  d.exact = true;
  d.rule = "solver.auto_exact";
  d.reason = "solver auto: the exact solver plans this step (" + std::to_string(layers) + " layers, at most " +
             std::to_string(kAutoExactMaxLayers) + ")";
  return d;
}

}  // namespace memscale::rules
