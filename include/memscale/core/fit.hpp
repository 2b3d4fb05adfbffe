// The fit advisor's search: the largest size of one dimension (batch or seq) whose step
// the engine can plan within the budget, on graphs scaled from a few profiles
// (fit_scaling.hpp), and the smallest budget of a given graph. Whether a size fits is the
// engine's decision (memscale::plan either returns a plan or refuses); the search only
// orders the questions. The need of a step grows with its size, so feasibility is monotone:
// doubling from min_size until a refusal (or max_size), then bisection between the last
// size that fits and the first that does not. Deterministic.
//
//   memscale::FitSearchResult r = memscale::fit_search(scaling, hardware, config, {1, 4096});
//   r.size;  // fits; r.size + 1 does not (unless r.capped)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/engine.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/fit_scaling.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"

namespace memscale {

/// The range a fit searches.
struct FitBounds {
  std::int64_t min_size = 1;  ///< the smallest size considered (must fit, else a refusal)
  std::int64_t max_size = 1;  ///< the largest (the model's max positions for seq, a cap for batch)
};

/// One size the search asked the engine about.
struct FitProbe {
  std::int64_t size = 0;
  bool fits = false;
  std::uint64_t predicted_peak_bytes = 0;  ///< of the plan (fits) or the engine's minimum (refused)
};

/// The answer of a fit search.
struct FitSearchResult {
  std::string dim;
  std::int64_t size = 0;  ///< the largest size that fits
  bool capped = false;    ///< size == max_size: larger sizes were not searched
  Plan plan;              ///< the engine's plan of the scaled graph at `size`
  std::vector<FitProbe> probes;  ///< in the order asked
};

/// The smallest budget for which the engine has a plan of `graph` under `config`'s other
/// keys: its refusal's min_budget_bytes at a budget of one byte.
inline std::uint64_t min_budget_bytes(const ModelGraph& graph, const Hardware& hardware, const Config& config) {
  Config tight = config;
  tight.memory_budget = MemoryBudget{MemoryBudget::Kind::bytes, 1, 0.0};
  try {
    return plan(graph, hardware, tight).predicted_peak_bytes;  // a mode that plans without fitting (off)
  } catch (const InfeasibleBudgetError& e) {
    return e.min_budget_bytes();
  }
}

namespace fit_detail {

struct Probe {
  std::optional<Plan> plan;
  std::uint64_t min_budget = 0;
};

inline Probe ask(const GraphScaling& scaling, const Hardware& hw, const Config& config, std::int64_t size,
                 std::vector<FitProbe>& probes) {
  const ModelGraph g = scaling.at(size);
  try {
    Plan p = plan(g, hw, config);
    probes.push_back({size, true, p.predicted_peak_bytes});
    return {std::move(p), 0};
  } catch (const InfeasibleBudgetError& e) {
    probes.push_back({size, false, e.min_budget_bytes()});
    return {std::nullopt, e.min_budget_bytes()};
  }
}

}  // namespace fit_detail

/// The largest size in [bounds.min_size, bounds.max_size] whose scaled graph the engine plans
/// within config's budget, and that plan. Throws InfeasibleBudgetError when min_size does
/// not fit (min_budget_bytes = the smallest budget at min_size) and ConfigError for bounds
/// that are not a range of positive sizes.
inline FitSearchResult fit_search(const GraphScaling& scaling, const Hardware& hardware, const Config& config,
                                  const FitBounds& bounds) {
  if (bounds.min_size < 1 || bounds.max_size < bounds.min_size)
    throw ConfigError("fit: size range [" + std::to_string(bounds.min_size) + ", " + std::to_string(bounds.max_size) +
                      "] of " + scaling.dim() + " is not a range of positive sizes");
  FitSearchResult r;
  r.dim = scaling.dim();
  fit_detail::Probe first = fit_detail::ask(scaling, hardware, config, bounds.min_size, r.probes);
  if (!first.plan)
    throw InfeasibleBudgetError("fit: even " + scaling.dim() + " " + std::to_string(bounds.min_size) +
                                    " does not fit the budget; the smallest budget for " + scaling.dim() + " " +
                                    std::to_string(bounds.min_size) + " is min_budget_bytes = " +
                                    std::to_string(first.min_budget),
                                first.min_budget);
  std::int64_t good = bounds.min_size;
  Plan good_plan = std::move(*first.plan);
  std::int64_t bad = 0;  // 0: no refusal seen yet
  while (bad == 0 && good < bounds.max_size) {
    const std::int64_t next = good > bounds.max_size / 2 ? bounds.max_size : good * 2;
    auto probe = fit_detail::ask(scaling, hardware, config, next, r.probes);
    if (probe.plan) good = next, good_plan = std::move(*probe.plan);
    else bad = next;
  }
  while (bad != 0 && bad - good > 1) {
    const std::int64_t mid = good + (bad - good) / 2;
    auto probe = fit_detail::ask(scaling, hardware, config, mid, r.probes);
    if (probe.plan) good = mid, good_plan = std::move(*probe.plan);
    else bad = mid;
  }
  r.size = good;
  r.capped = bad == 0;
  r.plan = std::move(good_plan);
  return r;
}

}  // namespace memscale
