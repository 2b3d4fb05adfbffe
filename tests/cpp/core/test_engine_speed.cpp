// A loose guard against accidental O(n^2) planning; benchmarks/planning_speed.py records
// the real figures (1,000 layers must plan in under 20 ms there).
#include <chrono>

#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

TEST(EngineSpeed, ThousandLayersPlanWellUnderASecond) {
  const ModelGraph g = synthetic_graph(1000);
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const std::uint64_t u = unoptimized_peak(g, hw);
  const Config c = budget_config(u / 3);
  plan(g, hw, c);  // warm up
  const auto t0 = std::chrono::steady_clock::now();
  const Plan p = plan(g, hw, c);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  EXPECT_LT(ms, 500.0) << "planning 1,000 layers took " << ms << " ms";
}

}  // namespace
}  // namespace memscale::test
