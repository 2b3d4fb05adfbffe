// Config.solver = "optimal" for a training graph: runs the exact solver (optimal.hpp) from
// the baseline the Config forces and records its plan in the engine's log the way the
// greedy records its own: per layer the id "solver.optimal" with what the layer's
// techniques cost, then each technique's own rule id and reason; every technique the
// solver could have used and did not, rejected as "solver.optimal"; and in the trace the
// optimality claim (the minimised cost, subject to the budget, over how many plans).
// The greedy runs first, on copies: its plan's cost bounds the search and is reported
// beside the optimum, and its smallest peak bounds the min-budget search.
#pragma once

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "memscale/core/engine/baseline.hpp"
#include "memscale/core/engine/decisions.hpp"
#include "memscale/core/engine/greedy.hpp"
#include "memscale/core/engine/optimal.hpp"
#include "memscale/core/engine/plan_cost.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/peak_tracker.hpp"

namespace memscale::engine_detail {

struct OptimalOutcome {
  bool fits = false;                       ///< a plan within the budget was found (and recorded)
  std::vector<model::LayerState> states;   ///< fits: the plan; else a plan at min_peak
  std::uint64_t min_peak = 0;              ///< else: the smallest predicted peak of any plan
  bool placement_failed = false;           ///< the offloads fit the pooled room but not host/disk one by one
  bool exhausted = false;                  ///< the search passed its work limit ...
  std::int64_t work_limit = 0;             ///< ... of this many states
};

inline std::string format_cost(double seconds) {
  char b[48];
  std::snprintf(b, sizeof b, "%.6g s", seconds);
  return b;
}

/// The greedy's states from the baseline, stopping at `stop_at` (none: its full sequence).
inline std::vector<model::LayerState> greedy_states(const ModelGraph& graph, const Setup& setup, const Baseline& base,
                                                    const TierLedger& ledger, std::optional<std::int64_t> stop_at) {
  DecisionLog scratch(graph.layers.size());
  TierLedger room = ledger;
  model::TrainingTracker tracker(graph, setup.step, base.states);
  Greedy<model::TrainingTracker> greedy(graph, setup, tracker, scratch, room, base.allowed);
  greedy.run(stop_at);
  return tracker.states();
}

/// The rule that decides technique t on `layer`, explained from the state before it.
inline rules::Candidate explain_technique(const Layer& layer, rules::Technique t, const model::LayerState& chosen,
                                          const model::LayerState& base, const rules::RuleContext& ctx,
                                          const std::string& pinned) {
  using rules::Technique;
  switch (t) {
    case Technique::checkpoint: return rules::checkpoint_rule(layer, base, ctx, true);
    case Technique::tile: {
      model::LayerState before = chosen;
      before.chunks = chosen.chunks / 2 >= 2 ? chosen.chunks / 2 : 1;
      before.offload_activations = base.offload_activations;
      return rules::tile_rule(layer, before, ctx, true);
    }
    case Technique::offload_activations: {
      model::LayerState before = chosen;
      before.offload_activations = false;
      return rules::activation_offload_rule(layer, before, ctx, true);
    }
    default: return rules::weight_offload_rule(layer, base, ctx, pinned, true);
  }
}

inline bool has(const model::LayerState& s, rules::Technique t) {
  switch (t) {
    case rules::Technique::checkpoint: return s.checkpoint;
    case rules::Technique::offload_activations: return s.offload_activations;
    case rules::Technique::offload_weights: return s.offload_weights;
    default: return s.tiled();
  }
}

/// Places the solver's offloads on host then disk, layer by layer; false when one does
/// not fit (the room was checked pooled).
inline bool place_offloads(const ModelGraph& graph, const Setup& setup, const Baseline& base,
                           const std::vector<model::LayerState>& states, TierLedger& ledger, DecisionLog& log) {
  for (std::size_t l = 0; l < graph.layers.size(); ++l)
    for (rules::Technique t : {rules::Technique::offload_weights, rules::Technique::offload_activations}) {
      if (!has(states[l], t) || has(base.states[l], t)) continue;
      const std::uint64_t bytes = offloaded_bytes(graph.layers[l], t, states[l], setup.step);
      const auto tier = ledger.place(bytes);
      if (!tier) return false;
      ledger.take(*tier, bytes);
      (t == rules::Technique::offload_weights ? log.weight_tier : log.activation_tier)[l] = *tier;
    }
  return true;
}

inline OptimalOutcome plan_optimal(const ModelGraph& graph, const Setup& setup, const Config& config,
                                   const Baseline& base, DecisionLog& log, TierLedger& ledger) {
  const std::size_t n = graph.layers.size();
  const rules::RuleContext ctx{graph, setup.step, setup.rates};
  const auto budget = static_cast<std::int64_t>(setup.budget);
  const bool min_memory = config.mode == Mode::min_memory;
  OptimalSolver solver(graph, setup, base, ledger);

  // The greedy on copies: an upper bound on the cost (when it fits) and on the min peak.
  const std::vector<model::LayerState> greedy =
      greedy_states(graph, setup, base, ledger, min_memory ? std::nullopt : std::optional<std::int64_t>(budget));
  const std::int64_t greedy_peak = model::s64(model::evaluate(graph, greedy, setup.step).peak);
  const double greedy_cost = plan_cost_seconds(graph, greedy, ctx);
  std::int64_t smallest_greedy = greedy_peak;
  auto full_greedy_peak = [&] {
    if (!min_memory)
      smallest_greedy = model::s64(model::evaluate(graph, greedy_states(graph, setup, base, ledger, std::nullopt), setup.step).peak);
    return smallest_greedy;
  };

  OptimalOutcome out;
  std::int64_t target = budget;
  if (min_memory) target = solver.min_peak(smallest_greedy);
  const double bound = greedy_peak <= target ? greedy_cost : std::numeric_limits<double>::infinity();
  bool exhausted = false;
  std::optional<OptimalPlan> best = solver.minimise_cost(target, bound, &exhausted);
  bool least_peak_only = false;  // the search ran out and only the least-peak plan fits
  if (exhausted) {
    out.exhausted = true;
    out.work_limit = solver.work_limit();
    if (min_memory || greedy_peak <= target) return out;  // the caller's greedy fits
    // The greedy does not fit where a plan may: the least-peak search (exact, no work limit)
    // answers, so a budget at min_budget_bytes is never refused.
    std::vector<model::LayerState> least = greedy_states(graph, setup, base, ledger, std::nullopt);
    const std::int64_t least_peak = solver.min_peak(full_greedy_peak(), &least);
    if (least_peak > target) {  // nothing fits: refuse with the true minimum
      out.exhausted = false;
      out.states = std::move(least);
      out.min_peak = model::u64(least_peak);
      return out;
    }
    least_peak_only = true;
    best = OptimalPlan{least, plan_cost_seconds(graph, least, ctx), solver.window_subproblems(), 0};
  }
  if (!best && greedy_peak <= target) {  // only the greedy's own cost bound was met (rounding): it is optimal
    best = OptimalPlan{greedy, greedy_cost, solver.window_subproblems(), 0};
  }
  if (!best) {
    // The plan at the minimum names what dominates it in the refusal.
    const std::int64_t reachable = full_greedy_peak();
    out.states = greedy_states(graph, setup, base, ledger, std::nullopt);
    out.min_peak = model::u64(solver.min_peak(reachable, &out.states));
    return out;
  }
  TierLedger room = ledger;
  DecisionLog tiers(n);
  // The baseline's forced offloads keep the tiers it placed them on (place_offloads skips them).
  tiers.weight_tier = log.weight_tier;
  tiers.activation_tier = log.activation_tier;
  if (!place_offloads(graph, setup, base, best->states, room, tiers)) {
    out.placement_failed = true;
    return out;
  }
  ledger = room;
  log.weight_tier = tiers.weight_tier;
  log.activation_tier = tiers.activation_tier;
  out.fits = true;
  out.states = best->states;

  const std::string within = min_memory ? "the least predicted peak, " + format_bytes(model::u64(target)) +
                                              " (mode min_memory)"
                                        : "the budget, " + format_bytes(setup.budget);
  const std::string which = least_peak_only ? "in the least-peak plan (the greedy's does not fit the budget, " +
                                                  format_bytes(setup.budget) + ")"
                                            : "in the least-cost plan within " + within;
  for (std::size_t l = 0; l < n; ++l) {
    const Layer& layer = graph.layers[l];
    const model::LayerState& s = best->states[l];
    const model::LayerState& b = base.states[l];
    bool changed = false;
    for (rules::Technique t : rules::kTechniques) changed |= has(s, t) && !has(b, t);
    changed |= s.chunks != b.chunks;
    if (changed) {
      const double c = layer_cost_seconds(layer, s, ctx);
      log.decide(l, "solver.optimal",
                 which + ": its techniques cost " + format_cost(c) + " of " +
                     format_cost(best->cost));
    }
    for (rules::Technique t : rules::kTechniques) {
      if (!base.allowed[l][static_cast<int>(t)]) continue;
      const bool added = has(s, t) && (!has(b, t) || (t == rules::Technique::tile && s.chunks != b.chunks));
      if (added) {
        const rules::Candidate c = explain_technique(layer, t, s, b, ctx, setup.pinned[l]);
        std::string reason = c.reason;
        if (t == rules::Technique::offload_weights) reason += " to " + log.weight_tier[l];
        if (t == rules::Technique::offload_activations) reason += " to " + log.activation_tier[l];
        log.decide(l, c.rule, reason + "; chosen by the exact solver");
        continue;
      }
      if (has(s, t)) continue;
      const rules::Candidate c = explain_technique(layer, t, s, b, ctx, setup.pinned[l]);
      if (!c.eligible) log.reject(layer, t, c.rule, c.reason);
      else log.reject(layer, t, "solver.optimal", which.substr(3) + " does without it");
    }
  }
  if (least_peak_only) {
    log.trace.push_back("solver optimal: the exact search passed its limit of " + std::to_string(out.work_limit) +
                        " states and the greedy's plan peaks at " + format_bytes(model::u64(greedy_peak)) +
                        ", over the budget; this plan is the least-peak plan (" + format_cost(best->cost) +
                        "), within the budget, not proven optimal");
    return out;
  }
  char plans[32];
  std::snprintf(plans, sizeof plans, "%.3g", solver.log10_plans());
  log.trace.push_back("solver optimal: minimised the modelled cost (recompute + tiling + exposed offload transfer, "
                      "cost_model.hpp) to " + format_cost(best->cost) + " subject to predicted peak <= " +
                      format_bytes(model::u64(target)) + (min_memory ? " (the least any plan reaches)" : "") +
                      " and the room below the device, over 10^" + plans + " per-layer choice combinations of " +
                      std::to_string(n) + " layers (" + std::to_string(best->subproblems) +
                      " window subproblems, exact)");
  log.trace.push_back("solver optimal: the greedy's plan costs " + format_cost(greedy_cost) + " at predicted peak " +
                      format_bytes(model::u64(greedy_peak)) +
                      (greedy_peak <= target ? std::string() : std::string(" (over the target)")));
  return out;
}

}  // namespace memscale::engine_detail
