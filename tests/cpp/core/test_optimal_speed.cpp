// Planning time of the exact solver (Config.solver "optimal") on the synthetic decoder
// chain at 100 and 1,000 layers, beside the greedy's. Wide limits: a guard against a
// blow-up, not a benchmark (docs/solver.md records the measured figures).
#include <chrono>
#include <iostream>

#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

double plan_ms(const ModelGraph& g, const Hardware& hw, const Config& c, Plan& out) {
  const auto t0 = std::chrono::steady_clock::now();
  out = plan(g, hw, c);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// `weights`: whether layers may offload weights (profiled training graphs may not: the
/// training runtime keeps weights resident, recorded in every layer's `cannot`).
void time_chain(std::size_t n, bool weights, double limit_ms) {
  ModelGraph g = synthetic_graph(n);
  if (!weights)
    for (auto& l : g.layers) l.cannot["offload_weights"] = "the training runtime keeps weights resident";
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const std::uint64_t u = unoptimized_peak(g, hw);
  const std::string greedy_solver = "\"solver\": \"greedy\"";
  const std::uint64_t m = min_budget(g, hw, greedy_solver);  // the greedy's: both solvers plan every budget tried
  for (const double share : {0.8, 0.4, 0.0}) {
    const auto budget = m + static_cast<std::uint64_t>(share * static_cast<double>(u - m));
    Plan greedy, optimal;
    const double tg = plan_ms(g, hw, budget_config(budget, greedy_solver), greedy);
    const double to = plan_ms(g, hw, budget_config(budget, "\"solver\": \"optimal\""), optimal);
    EXPECT_LE(optimal.predicted_peak_bytes, budget);
    const double cg = plan_cost_seconds(g, hw, greedy), co = plan_cost_seconds(g, hw, optimal);
    EXPECT_LE(co, cg * (1 + 1e-9));
    bool exact = true;
    for (const auto& line : optimal.trace) exact &= line.find("not proven optimal") == std::string::npos;
    std::cout << "[optimal speed] " << n << " layers" << (weights ? "" : " (no weight offload)") << " at min + " << share
              << " x (unoptimized - min): greedy " << tg << " ms (cost " << cg << " s), optimal " << to << " ms (cost " << co
              << " s" << (exact ? "" : ", search limit reached: the greedy's plan") << ")\n";
    EXPECT_LT(to, limit_ms) << n << " layers";
  }
}

/// Config.solver "auto" (the default): the exact solver's plan up to 256 layers, the
/// greedy's above, and the trace says which.
TEST(AutoSolver, ExactUpTo256LayersGreedyAbove) {
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  for (const std::size_t n : {std::size_t{100}, std::size_t{257}}) {
    ModelGraph g = synthetic_graph(n);
    for (auto& l : g.layers) l.cannot["offload_weights"] = "the training runtime keeps weights resident";
    const std::uint64_t budget = (unoptimized_peak(g, hw) + min_budget(g, hw)) / 2;
    const Plan automatic = plan(g, hw, budget_config(budget));
    const Plan asked = plan(g, hw, budget_config(budget, n <= 256 ? "\"solver\": \"optimal\"" : "\"solver\": \"greedy\""));
    EXPECT_EQ(automatic.predicted_peak_bytes, asked.predicted_peak_bytes) << n;
    EXPECT_DOUBLE_EQ(plan_cost_seconds(g, hw, automatic), plan_cost_seconds(g, hw, asked)) << n;
    const std::string expected = n <= 256 ? "solver auto: the exact solver plans this step" : "solver auto: the greedy plans";
    bool said = false;
    for (const auto& line : automatic.trace) said |= line.rfind(expected, 0) == 0;
    EXPECT_TRUE(said) << n << " layers: no \"" << expected << "\" in the trace";
  }
}

TEST(OptimalSpeed, HundredLayersAsProfiled) { time_chain(100, false, 1000.0); }
TEST(OptimalSpeed, ThousandLayersAsProfiled) { time_chain(1000, false, 20000.0); }
TEST(OptimalSpeed, HundredLayersWithWeightOffload) { time_chain(100, true, 60000.0); }

}  // namespace
}  // namespace memscale::test
