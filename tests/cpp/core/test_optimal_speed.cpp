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
  const std::uint64_t m = min_budget(g, hw);  // the greedy's: both solvers plan every budget tried
  for (const double share : {0.8, 0.4, 0.0}) {
    const auto budget = m + static_cast<std::uint64_t>(share * static_cast<double>(u - m));
    Plan greedy, optimal;
    const double tg = plan_ms(g, hw, budget_config(budget), greedy);
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

TEST(OptimalSpeed, HundredLayersAsProfiled) { time_chain(100, false, 1000.0); }
TEST(OptimalSpeed, ThousandLayersAsProfiled) { time_chain(1000, false, 20000.0); }
TEST(OptimalSpeed, HundredLayersWithWeightOffload) { time_chain(100, true, 60000.0); }

}  // namespace
}  // namespace memscale::test
