// Inference plans the pager runs as they are: the prefetch window the memory model counts,
// the resident limit, and the refusals that leave the pager nothing to run.
#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

/// A CPU-only decoder: embedding and head of 4 MB, `blocks` blocks of 1 MB, a small KV cache.
ModelGraph decoder(int blocks) {
  ModelGraph g;
  g.training = false;
  g.optimizer = "none";
  g.batch = 2;
  g.seq = 16;
  auto add = [&](const std::string& name, const std::string& kind, std::uint64_t bytes, std::uint64_t kv) {
    Layer l;
    l.index = static_cast<std::int64_t>(g.layers.size());
    l.name = name;
    l.kind = kind;
    l.param_bytes = bytes;
    l.kv_cache_bytes = kv;
    l.dims.hidden = 64;
    l.dims.intermediate = 256;
    g.layers.push_back(l);
  };
  add("embed", "embedding", 4'000'000, 0);
  for (int i = 0; i < blocks; ++i) add("blocks." + std::to_string(i), "block", 1'000'000, 4096);
  add("head", "lm_head", 4'000'000, 0);
  return g;
}

Hardware cpu() {
  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = 64ull << 30;
  hw.offload_dir_free_bytes = 1ull << 40;
  return hw;
}

bool traced(const Plan& p, const std::string& text) {
  for (const auto& t : p.trace)
    if (t.find(text) != std::string::npos) return true;
  return false;
}

TEST(InferencePlan, CountsAShallowerPrefetchWindowRatherThanRefuse) {
  const ModelGraph g = decoder(8);
  // 6 MB: no plan holds the 4 MB embedding with one 4 MB layer prefetched behind it, but the
  // embedding alone (the pager prefetches only where its resident limit has room) fits.
  const Plan p = plan(g, cpu(), budget_config(6'000'000));
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  EXPECT_EQ(p.offload.policy, "budget");
  EXPECT_EQ(p.offload.prefetch_n_ahead, 1u);  // what the pager runs, as far as ram_bytes has room
  EXPECT_TRUE(traced(p, "the memory model counts 0")) << p.to_json_text();
  std::uint64_t resident = 0, largest = 0;
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    if (p.layers[l].has("offload_weights")) largest = std::max(largest, g.layers[l].param_bytes);
    else resident += g.layers[l].param_bytes;
  }
  EXPECT_EQ(p.offload.ram_bytes, resident + largest);  // the window counted: the layer computing alone
  // A roomier budget keeps the configured window.
  const Plan roomy = plan(g, cpu(), budget_config(12'000'000));
  EXPECT_FALSE(traced(roomy, "the memory model counts"));
  // Refused only when even the layer computing alone does not fit; the minimum is that plan's.
  try {
    plan(g, cpu(), budget_config(3'000'000));
    FAIL();
  } catch (const InfeasibleBudgetError& e) {
    EXPECT_LT(e.min_budget_bytes(), 6'000'000u);
    EXPECT_LE(plan(g, cpu(), budget_config(e.min_budget_bytes())).predicted_peak_bytes, e.min_budget_bytes());
  }
}

TEST(InferencePlan, AnExplicitRamLimitTooSmallForThePrefetchWindowIsPlannedNotRefused) {
  const ModelGraph g = decoder(8);
  // 6 MB of ram_bytes: the 4 MB head and embedding cannot each have a 4 MB layer behind them.
  const Plan p = plan(g, cpu(), budget_config(20'000'000, R"("offload": {"policy": "budget", "ram_bytes": 6000000, "prefetch_n_ahead": 2})"));
  EXPECT_EQ(p.offload.prefetch_n_ahead, 2u);
  EXPECT_LE(p.offload.ram_bytes, 6'000'000u);
  EXPECT_TRUE(traced(p, "offload.ram_bytes 5.72 MiB cannot hold 2 layer(s) ahead")) << p.to_json_text();
  // Below the layer computing alone it is the pager's own refusal, from the engine.
  try {
    plan(g, cpu(), budget_config(20'000'000, R"("offload": {"policy": "budget", "ram_bytes": 3000000})"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("the largest paged layer \"embed\""), std::string::npos) << e.what();
  }
  // ram_bytes above the budget cannot be a resident limit inside it.
  try {
    plan(g, cpu(), budget_config(5'000'000, R"("offload": {"policy": "budget", "ram_bytes": 6000000})"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("offload.ram_bytes: got 6000000 (5.72 MiB), more than memory_budget 5000000"),
              std::string::npos)
        << e.what();
  }
}

TEST(InferencePlan, AnExplicitRamLimitIsUsedOnlyAsFarAsTheBudgetHasRoom) {
  const ModelGraph g = decoder(8);
  const Plan p = plan(g, cpu(), budget_config(10'000'000, R"("offload": {"policy": "budget", "ram_bytes": 10000000})"));
  EXPECT_LE(p.predicted_peak_bytes, p.budget_bytes);
  // The pager may hold what the plan counted plus the budget's headroom, never ram_bytes itself.
  std::uint64_t resident = 0, largest = 0, paged = 0;
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    const std::uint64_t w = g.layers[l].param_bytes;
    if (p.layers[l].has("offload_weights")) largest = std::max(largest, w), paged += w;
    else resident += w;
  }
  const std::uint64_t counted = resident + std::min(paged, 2 * largest);  // the default prefetch of 1
  ASSERT_LT(p.predicted_peak_bytes, p.budget_bytes);
  EXPECT_EQ(p.offload.ram_bytes, counted + (p.budget_bytes - p.predicted_peak_bytes));
  EXPECT_LT(p.offload.ram_bytes, 10'000'000u);
}

TEST(InferencePlan, MaxPositionsRoundTripsThroughTheGraphJson) {
  ModelGraph g = decoder(1);
  g.max_positions = 2048;
  EXPECT_EQ(ModelGraph::from_json_text(g.to_json_text()).max_positions, 2048);
  g.max_positions = 0;
  EXPECT_EQ(ModelGraph::from_json_text(g.to_json_text()), g);
}

}  // namespace
}  // namespace memscale::test
