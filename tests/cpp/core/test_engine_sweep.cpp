// A budget sweep on every fixture from 100% of the unoptimized peak down
// to min_budget_bytes in 5% steps.
#include <iostream>

#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

struct SweepCase {
  std::string graph, hardware;
};

class BudgetSweep : public ::testing::TestWithParam<SweepCase> {};

TEST_P(BudgetSweep, FitsEveryBudgetAndSavesMoreAsItShrinks) {
  const ModelGraph g = fixture_graph(GetParam().graph);
  const Hardware hw = fixture_hardware(GetParam().hardware);
  const std::uint64_t u = unoptimized_peak(g, hw);
  const std::uint64_t m = min_budget(g, hw);
  ASSERT_GT(m, 0u);
  ASSERT_LT(m, u) << "some technique must help";
  std::uint64_t previous_predicted = ~0ull;
  int steps = 0;
  for (int percent = 100; percent > 0; percent -= 5) {
    const std::uint64_t budget = u / 100 * static_cast<std::uint64_t>(percent);
    if (budget < m) break;
    const Plan p = plan(g, hw, budget_config(budget));
    EXPECT_LE(p.predicted_peak_bytes, budget) << percent << "%";
    EXPECT_LE(p.predicted_peak_bytes, previous_predicted) << percent << "%: a lower budget saved less";
    EXPECT_EQ(p.unoptimized_peak_bytes, u);
    previous_predicted = p.predicted_peak_bytes;
    ++steps;
  }
  EXPECT_GE(steps, 2);
  const Plan at_min = plan(g, hw, budget_config(m));
  EXPECT_EQ(at_min.predicted_peak_bytes, m);
  EXPECT_LE(at_min.predicted_peak_bytes, previous_predicted);
  try {
    plan(g, hw, budget_config(static_cast<std::uint64_t>(0.97 * static_cast<double>(m))));
    ADD_FAILURE() << "0.97 x min_budget was accepted";
  } catch (const InfeasibleBudgetError& e) {
    EXPECT_EQ(e.min_budget_bytes(), m);
  }
  std::cout << "[sweep] " << GetParam().graph << " on " << GetParam().hardware << ": unoptimized " << format_bytes(u)
            << ", min_budget " << format_bytes(m) << " (" << (100.0 * static_cast<double>(m) / static_cast<double>(u))
            << "%), " << steps << " budgets\n";
}

std::vector<SweepCase> cases() {
  std::vector<SweepCase> out;
  for (const auto& g : graph_fixtures()) out.push_back({g, "gpu_24gib.json"});
  out.push_back({"gpt2_small_train.json", "gpu_80gib_x8.json"});
  out.push_back({"llama7b_train.json", "gpu_80gib_x8.json"});
  out.push_back({"t5_base_train.json", "cpu_24gib.json"});
  out.push_back({"llama7b_infer.json", "cpu_24gib.json"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BudgetSweep, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string name = info.param.graph + "_" + info.param.hardware;
  for (auto& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
});

}  // namespace
}  // namespace memscale::test
