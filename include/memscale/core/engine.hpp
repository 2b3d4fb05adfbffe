// The decision engine: a pure, deterministic function from a profiled graph,
// the hardware and the Config to a per-layer Plan. No randomness, no clock, no unordered
// iteration; candidates are ordered by (escalation phase, cost per byte saved, layer
// index). docs/memory-model.md has the memory model, docs/rules.md every rule id.
//
//   memscale::Plan p = memscale::plan(graph, hardware, config);
//   std::cout << memscale::plan_summary(p);
//
// Flow: resolve the budget of one device (a data-parallel replica per device), apply what
// the Config forces, skip tiny models (unless force_optimize) or stop at mode "off", then
// let the rules add techniques cheapest-first until the predicted peak fits (auto) or
// nothing lowers it further (min_memory). No plan fits: InfeasibleBudgetError with the
// smallest budget that has one and what dominates it.
#pragma once

#include <cstdio>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/engine/baseline.hpp"
#include "memscale/core/engine/decisions.hpp"
#include "memscale/core/engine/finalize.hpp"
#include "memscale/core/engine/greedy.hpp"
#include "memscale/core/engine/optimal_plan.hpp"
#include "memscale/core/engine/plan_states.hpp"
#include "memscale/core/engine/policy_stage.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/engine/tier_report.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/log.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/peak_tracker.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/plan_summary.hpp"
#include "memscale/core/policy/model.hpp"
#include "memscale/core/reservation.hpp"
#include "memscale/core/rules/optimizer_offload.hpp"
#include "memscale/core/rules/skip.hpp"
#include "memscale/core/rules/solver.hpp"
#include "memscale/core/tier_search.hpp"

namespace memscale {

namespace engine_detail {

inline std::string describe_peak(const ModelGraph& graph, const model::PeakReport& r) {
  const auto [what, bytes] = r.dominant();
  char share[32];
  std::snprintf(share, sizeof share, "%.0f%%", r.peak ? 100.0 * static_cast<double>(bytes) / static_cast<double>(r.peak) : 0.0);
  std::string where = r.phase == "forward" || r.phase == "backward"
                          ? "the " + r.phase + " of \"" + graph.layers[static_cast<std::size_t>(r.layer)].name + "\""
                          : "the " + std::string(r.phase == "optimizer_step" ? "optimizer step" : "inference step");
  return format_bytes(r.peak) + " at " + where + ", dominated by " + what + " (" + format_bytes(bytes) + ", " + share + ")";
}

inline std::string disabled_techniques(const Config& config) {
  std::string out;
  for (const auto& [name, s] : config.techniques)
    if (s == Switch::off) out += (out.empty() ? "" : ", ") + ("techniques." + name);
  return out;
}

/// `counted_prefetch`: the prefetch window the memory model counts, when not the Config's
/// depth (plan_inference); the plan keeps the Config's depth, what the pager runs.
template <class Tracker>
Plan run_engine(const ModelGraph& graph, const Hardware& hw, const Config& config, const PlanOptions& options,
                std::optional<std::uint64_t> counted_prefetch = std::nullopt,
                const rules::OptimizerOffload* optimizer_offload = nullptr) {
  Setup setup = make_setup(graph, hw, config, options);
  if (counted_prefetch) setup.step.prefetch_n_ahead = *counted_prefetch;
  const std::size_t n = graph.layers.size();
  DecisionLog log(n);
  TierLedger ledger(setup.rates.gpu, setup.capacity);

  const std::vector<model::LayerState> none(n);
  const model::PeakReport unoptimized = model::evaluate(graph, none, setup.step);
  // Optimizer offload changes the step from here on (the unoptimized peak stays the resident one).
  if (optimizer_offload) rules::apply_optimizer_offload(*optimizer_offload, setup.step);
  const double pressure = static_cast<double>(unoptimized.peak) / static_cast<double>(setup.budget);
  {
    char line[160];
    std::snprintf(line, sizeof line, "pressure %.3f = unoptimized peak / budget %s", pressure,
                  format_bytes(setup.budget).c_str());
    const std::size_t gpus = hw.gpu_count();
    log.trace.push_back(gpus > 0 ? std::to_string(gpus) + " GPU(s), planning one data-parallel replica against " +
                                       format_bytes(setup.device_bytes) + " (the smallest GPU)"
                                 : "CPU-only: host RAM (" + format_bytes(setup.device_bytes) + ") is the device; offload goes to disk");
    if (graph.distributed.active())
      log.trace.push_back(rules::per_rank_note(graph, setup.device_bytes, gpus > 0));
    log.trace.push_back("unoptimized peak " + describe_peak(graph, unoptimized));
    log.trace.push_back(line);
  }
  for (const auto& glob : setup.overrides.unmatched_globs)
    log.trace.push_back("layer_overrides[\"" + glob + "\"] matches no layer of this graph");
  if (!graph.training && config.solver == Solver::optimal)
    log.trace.push_back("solver \"optimal\": applies to training plans; this inference plan is the greedy's "
                        "(docs/solver.md)");
  if (!setup.capacity.disk_known)
    log.trace.push_back("offload_dir_free_bytes unknown (0): disk capacity is not checked");
  if (!graph.training)
    log.trace.push_back("activation reservation " + format_bytes(setup.reservation.per_device_bytes) + " per device (" +
                        setup.reservation.source + ", " + std::to_string(setup.reservation.tokens_per_step) +
                        " tokens per step " +
                        (config.reservation.prefill_tokens > 0 ? "from reservation.prefill_tokens"
                                                               : "from the example inputs (batch x seq)") +
                        ", safety factor " + json_fields::format_number(setup.reservation.safety_factor) +
                        (setup.reservation.calibrated ? ", calibrated" : "") + ")");

  Baseline base = forced_baseline(graph, setup, log, ledger);
  // Training weight paging updates the home copy in the offloaded step, so a graph whose
  // runtime streams the optimizer pages weights only at optimizer offload level 3
  // (plan_training); levels 0-2 plan as they did before it existed.
  if (graph.training && graph.optimizer_offloadable && !(optimizer_offload && optimizer_offload->weights))
    for (std::size_t l = 0; l < n; ++l) {
      bool& allowed = base.allowed[l][static_cast<int>(rules::Technique::offload_weights)];
      if (!allowed || base.states[l].offload_weights) continue;
      allowed = false;
      log.reject(graph.layers[l], rules::Technique::offload_weights, "offload_weights.after_optimizer_offload",
                 "training pages weights only once the optimizer state and gradients are offloaded too "
                 "(optimizer_offload.weights)");
    }
  const bool config_asks = base.anything_forced || config.offload.kind != OffloadPolicy::Kind::none || !config.tiers.empty();
  Outcome outcome;

  // The plan's offload section is sized on the window-counted peak (its headroom); the
  // predicted peak then charges the weights the pager will hold within that limit.
  auto finish = [&](const std::vector<model::LayerState>& states) {
    const model::PeakReport counted = model::evaluate(graph, states, setup.step);
    OffloadPlan offload = offload_plan(graph, setup, config, states, counted.peak);
    const model::PeakReport predicted = predicted_report(graph, setup, states, offload);
    log.trace.push_back("predicted peak " + describe_peak(graph, predicted));
    if (offload.policy != "none")
      log.trace.push_back("weights: the pager's resident limit " + format_bytes(offload.ram_bytes) + " holds " +
                          format_bytes(offload.predicted_resident_bytes) + " at its peak (replayed at " +
                          std::to_string(offload.prefetch_n_ahead) + " ahead), charged for the weights it pages");
    return build_plan(graph, setup, config, states, log, outcome, unoptimized.peak, predicted.peak, std::move(offload));
  };

  if (config.mode == Mode::off) {
    const rules::SkipDecision d = rules::mode_off_rule(config_asks);
    outcome.skipped = d.skip;
    outcome.skip_rule = d.rule;
    outcome.skip_reason = d.reason;
    outcome.keep_reason = d.reason;
    log.trace.push_back(d.reason);
    apply_ram_budget(graph, setup, config.offload, base, log, ledger);
    apply_fixed_tiers(graph, setup, config, base, log, ledger);
    for (std::size_t l = 0; l < n; ++l)
      for (rules::Technique t : rules::kTechniques)
        if (base.allowed[l][static_cast<int>(t)]) log.reject(graph.layers[l], t, "mode.off", "mode is \"off\"");
    Plan p = finish(base.states);
    if (p.predicted_peak_bytes > p.budget_bytes)
      p.trace.push_back("warning: mode \"off\": the predicted peak exceeds the budget by " +
                        format_bytes(p.predicted_peak_bytes - p.budget_bytes) + "; MemScale changes nothing");
    return p;
  }

  const rules::SkipDecision tiny =
      rules::tiny_model_rule(unoptimized.peak, setup.device_bytes, pressure, config.force_optimize, config_asks);
  if (!tiny.rule.empty()) log.trace.push_back(tiny.reason);
  if (tiny.skip) {
    outcome.skipped = true;
    outcome.skip_rule = tiny.rule;
    outcome.skip_reason = tiny.reason;
    log.rejected.clear();  // nothing was considered
    return finish(none);
  }

  apply_ram_budget(graph, setup, config.offload, base, log, ledger);
  apply_fixed_tiers(graph, setup, config, base, log, ledger);

  if constexpr (std::is_same_v<Tracker, model::TrainingTracker>) {
    const rules::SolverDecision solver = rules::solver_rule(config.solver, graph.training, n);
    if (!solver.reason.empty()) log.trace.push_back(solver.reason);
    if (solver.exact && setup.step.offload_optimizer_state)
      log.trace.push_back("solver: the exact search does not model optimizer offload; this plan is the greedy's");
    if (solver.exact && !setup.step.offload_optimizer_state) {
      OptimalOutcome o = plan_optimal(graph, setup, config, base, log, ledger);
      if (o.fits) {
        outcome.keep_reason = o.exhausted ? "the least-peak plan leaves this layer as it is"
                                          : "the least-cost plan leaves this layer as it is";
        return finish(o.states);
      }
      if (!o.placement_failed && !o.exhausted) {
        const model::PeakReport at_min = model::evaluate(graph, o.states, setup.step);
        const std::string disabled = disabled_techniques(config);
        throw InfeasibleBudgetError(
            "no plan fits the budget of " + format_bytes(setup.budget) + " per device: the exact solver's smallest " +
                "plan under this Config peaks at " + describe_peak(graph, at_min) +
                ". min_budget_bytes = " + std::to_string(o.min_peak) + "; raise memory_budget to at least that" +
                (disabled.empty() ? std::string() : ", or allow " + disabled) +
                (config.layer_overrides.empty() ? std::string() : ", or relax layer_overrides"),
            o.min_peak);
      }
      const bool asked = config.solver == Solver::optimal;  // "auto" falls back without a warning
      const std::string who = asked ? "warning: solver \"optimal\": " : "solver auto: ";
      log.trace.push_back(o.exhausted ? who + "the exact search passed its limit of " + std::to_string(o.work_limit) +
                                            " states on this graph (docs/solver.md); this plan is the greedy's, not "
                                            "proven optimal"
                                      : who + "its offloads fit the room below the device only pooled (host + disk), "
                                              "not one by one; this plan is the greedy's");
      if (asked) memscale::log::warn(log.trace.back());
      else memscale::log::info(log.trace.back());
    }
  }
  Tracker tracker(graph, setup.step, base.states);
  Greedy<Tracker> greedy(graph, setup, tracker, log, ledger, base.allowed);
  const auto budget = static_cast<std::int64_t>(setup.budget);
  const std::size_t applied = greedy.run(config.mode == Mode::min_memory ? std::nullopt : std::optional<std::int64_t>(budget));
  const std::vector<model::LayerState> states = tracker.states();
  const model::PeakReport final_peak = model::evaluate(graph, states, setup.step);
  if (final_peak.peak > setup.budget) {
    const std::string disabled = disabled_techniques(config);
    throw InfeasibleBudgetError(
        "no plan fits the budget of " + format_bytes(setup.budget) + " per device: the smallest plan under this Config " +
            "peaks at " + describe_peak(graph, final_peak) + ". min_budget_bytes = " + std::to_string(final_peak.peak) +
            "; raise memory_budget to at least that" +
            (disabled.empty() ? std::string() : ", or allow " + disabled) +
            (config.layer_overrides.empty() ? std::string() : ", or relax layer_overrides"),
        final_peak.peak);
  }
  outcome.keep_reason = applied == 0 ? "the step fits the budget without any technique"
                                     : "the plan fits the budget before this layer's turn";
  if (config.mode == Mode::min_memory) outcome.keep_reason = "no technique on this layer lowers the peak further";
  return finish(states);
}

/// Inference. The pager never holds more than its resident limit (Plan.offload.ram_bytes):
/// a prefetch that has no room is dropped. So the prefetch window the memory model counts
/// to size that limit is the engine's to choose: the configured depth where a plan fits with
/// it, else the deepest shallower window that fits (down to the layer computing alone),
/// rather than a refusal. The plan's offload section keeps the configured depth (what the
/// pager runs), and the plan's predicted peak charges what the pager will hold at that
/// depth within ram_bytes (Plan.offload.predicted_resident_bytes, replayed: an LRU pager
/// keeps what its limit has room for whatever the depth), never more than ram_bytes. The
/// same holds for a policy the user set: a ram_bytes that holds the configured window does
/// not make the window fit the budget (more budget must never be refused where less is planned).
inline Plan plan_inference(const ModelGraph& graph, const Hardware& hw, const Config& config, const PlanOptions& options) {
  const std::uint64_t asked = config.offload.prefetch_n_ahead;
  // min_memory: the least memory is the window of the layer computing alone.
  std::uint64_t counted = config.mode == Mode::min_memory ? 0 : asked;
  for (;;) {
    try {
      Plan p = run_engine<model::InferenceTracker>(graph, hw, config, options, counted);
      if (counted < asked)
        p.trace.push_back("prefetch window: " +
                          (config.mode == Mode::min_memory ? std::string("mode min_memory")
                                                           : "no plan fits counting " + std::to_string(asked) +
                                                                 " layer(s) ahead") +
                          "; the memory model counts " + std::to_string(counted) +
                          " to size offload.ram_bytes, and the pager prefetches " + std::to_string(asked) +
                          " only where that limit has room (the predicted peak charges what it holds)");
      return p;
    } catch (const InfeasibleBudgetError&) {
      if (counted == 0) throw;  // the refusal at the shallowest window: its minimum
      --counted;
    }
  }
}

}  // namespace engine_detail

/// Plans `graph` on `hardware` under `config`. Throws ConfigError for invalid input (naming
/// the field) and InfeasibleBudgetError when no plan fits (min_budget_bytes = the smallest
/// budget with a plan under the same Config).
/// With Config.auto_policy the learned stage (engine/policy_stage.hpp) first narrows the
/// eligible techniques; the rule engine plans either way.
namespace engine_detail {

/// A training plan when no plan of per-layer techniques fits (`refused`): the state on the
/// next tier, then the gradients too, then per-layer weight paging as well, then a step
/// without overlap (rules/optimizer_offload.hpp), each with the per-layer techniques planned again on top. Rethrows the refusal with the least min_budget_bytes
/// over the levels that apply: what offload can reach.
inline Plan plan_training(const ModelGraph& graph, const Hardware& hw, const Config& config,
                          const PlanOptions& options) {
  try {
    return run_engine<model::TrainingTracker>(graph, hw, config, options);
  } catch (const InfeasibleBudgetError& refused) {
    const Setup setup = make_setup(graph, hw, config, options);
    std::optional<InfeasibleBudgetError> last;
    for (const int level : {1, 2, 3, 4}) {
      const rules::OptimizerOffload o = rules::optimizer_offload_rule(graph, setup.step, setup.rates, setup.capacity,
                                                                      level >= 2, level >= 3, level == 4);
      const bool gradients = o.gradients;
      if (!o.applies) {
        memscale::log::info("optimizer offload: " + o.rule + ": " + o.reason);
        continue;
      }
      try {
        Plan p = run_engine<model::TrainingTracker>(graph, hw, config, options, std::nullopt, &o);
        p.optimizer_offload = {gradients ? "state+gradients" : "state", o.tier, o.moved_bytes, o.window_bytes, o.rule,
                               o.reason};
        p.trace.push_back(o.rule + ": " + o.reason);
        return p;
      } catch (const InfeasibleBudgetError& e) {
        if (!last || e.min_budget_bytes() < last->min_budget_bytes()) last = e;
      }
    }
    if (last) throw *last;
    throw;
  }
}

}  // namespace engine_detail

inline Plan plan(const ModelGraph& graph, const Hardware& hardware, const Config& config,
                 const PlanOptions& options = {}) {
  auto rules_plan = [&](const Config& c) {
    if (graph.training) return engine_detail::plan_training(graph, hardware, c, options);
    return engine_detail::plan_inference(graph, hardware, c, options);
  };
  if (!config.auto_policy) return rules_plan(config);
  return engine_detail::plan_with_policy(graph, hardware, config, options, policy::shipped_model(), rules_plan);
}

/// The modelled cost of a training plan of `graph` on `hardware` (engine/plan_cost.hpp):
/// seconds of recompute, tiling and exposed offload transfer its techniques add per step.
/// The figure the greedy orders by and the exact solver (Config.solver "optimal") minimises.
inline double plan_cost_seconds(const ModelGraph& graph, const Hardware& hardware, const Plan& plan) {
  if (!plan.training || !graph.training)
    throw MemScaleError("plan_cost: the modelled cost is defined for training plans of training graphs");
  if (plan.layers.size() != graph.layers.size())
    throw MemScaleError("plan_cost: the plan has " + std::to_string(plan.layers.size()) + " layers, the graph " +
                        std::to_string(graph.layers.size()));
  model::StepContext step;
  step.training = true;
  step.element_bytes = cost::dtype_bytes(graph.dtype);
  step.data_parallel = hardware.gpu_count() > 1 || rules::ddp_buckets(graph);
  const cost::Rates rates = cost::rates_of(hardware);
  return engine_detail::plan_cost_seconds(graph, engine_detail::plan_states(plan), rules::RuleContext{graph, step, rates});
}

/// The tier-placement problem `graph` poses on `hardware` (sizes, capacities with the
/// planning device's budget as GPU capacity, rates, per-step compute); Config.tiers
/// become fixed splits. Feed it to search_tier_policy().
inline TierProblem tier_problem(const ModelGraph& graph, const Hardware& hardware, const Config& config) {
  Config inference = config;
  ModelGraph g = graph;
  g.training = false;  // the tier model is an inference model
  const engine_detail::Setup setup = engine_detail::make_setup(g, hardware, inference, {});
  return engine_detail::tier_problem_of(g, setup, config, setup.budget);
}

}  // namespace memscale
