// The tier-policy search returns the minimum-cost feasible policy (checked
// against trying every policy of the 5% grid) and explains infeasible capacities.
#include <random>

#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

/// Every (gpu, cpu) split of one type on the grid, or the fixed one.
std::vector<TierSplit> grid(const TierProblem& p, const char* type) {
  if (p.fixed.count(type)) return {p.fixed.at(type)};
  std::vector<TierSplit> out;
  for (int g = 0; g <= 100; g += p.step_percent)
    for (int c = 0; g + c <= 100; c += p.step_percent) out.push_back({static_cast<double>(g), static_cast<double>(c)});
  return out;
}

struct Brute {
  bool found = false;
  TierPolicy policy;
  TierCost cost;
};

Brute brute_force(const TierProblem& p) {
  Brute best;
  const auto w = grid(p, "weights"), k = grid(p, "kv_cache"), a = grid(p, "activations");
  for (const auto& sw : w)
    for (const auto& sk : k)
      for (const auto& sa : a) {
        const TierPolicy pol{sw, sk, sa};
        const TierCost c = tier_cost(p, pol);
        if (!tier_feasible(p, c)) continue;
        if (!best.found || tier_better(c, pol, best.cost, best.policy)) best = {true, pol, c};
      }
  return best;
}

TierProblem random_problem(std::mt19937& rng) {
  auto gib = [&](double lo, double hi) {
    return static_cast<std::uint64_t>((lo + (hi - lo) * static_cast<double>(rng() % 10000) / 10000.0) * (1ull << 30));
  };
  TierProblem p;
  p.weights_bytes = gib(2, 200);
  p.kv_cache_bytes = gib(0.5, 80);
  p.activation_bytes = gib(0.1, 8);
  p.kv_append_bytes = p.kv_cache_bytes / 2048;
  p.gpu_capacity = gib(4, 80);
  p.cpu_capacity = gib(8, 200);
  p.disk_capacity = gib(50, 1000);
  p.host_to_device_bytes_per_s = 8e9 + static_cast<double>(rng() % 24) * 1e9;
  p.disk_read_bytes_per_s = 1e9 + static_cast<double>(rng() % 6) * 1e9;
  p.disk_write_bytes_per_s = 0.5e9 + static_cast<double>(rng() % 4) * 1e9;
  p.compute_s = 0.001 * static_cast<double>(rng() % 400);
  return p;
}

void expect_same_as_brute_force(const TierProblem& p) {
  const Brute b = brute_force(p);
  ASSERT_TRUE(b.found);
  const TierSearchResult r = search_tier_policy(p);
  EXPECT_EQ(r.policy, b.policy);
  EXPECT_EQ(r.cost, b.cost);
  EXPECT_TRUE(tier_feasible(p, r.cost));
  EXPECT_LT(r.evaluated, 231ull * 231 * 231);  // it does not try the whole grid
}

TEST(TierSearch, EqualsBruteForceOverTheFivePercentGrid) {
  std::mt19937 rng(42);
  int checked = 0;
  while (checked < 4) {
    TierProblem p = random_problem(rng);
    if (brute_force(p).found == false) continue;
    expect_same_as_brute_force(p);
    ++checked;
  }
}

TEST(TierSearch, HonoursFixedSplitsAndCoarserGrids) {
  std::mt19937 rng(99);
  for (int i = 0; i < 6; ++i) {
    TierProblem p = random_problem(rng);
    p.gpu_capacity += 64ull << 30;  // roomy enough that the fixed split fits
    p.step_percent = i % 2 ? 10 : 5;
    if (i % 3 == 0) p.fixed["activations"] = {100, 0};
    if (i % 3 == 1) p.fixed["weights"] = {20, 50};
    if (!brute_force(p).found) continue;
    expect_same_as_brute_force(p);
    for (const auto& [type, split] : p.fixed) {
      const TierPolicy pol = search_tier_policy(p).policy;
      const TierSplit& got = type == "weights" ? pol.weights : type == "kv_cache" ? pol.kv_cache : pol.activations;
      EXPECT_EQ(got, split);
    }
  }
}

TEST(TierSearch, ComputeBoundStaysOnGpuAndIoBoundMovesLeast) {
  TierProblem p;
  p.weights_bytes = 10ull << 30;
  p.kv_cache_bytes = 4ull << 30;
  p.activation_bytes = 1ull << 30;
  p.gpu_capacity = 100ull << 30;
  p.cpu_capacity = 100ull << 30;
  p.disk_capacity = 1000ull << 30;
  p.compute_s = 0.05;
  const TierSearchResult all = search_tier_policy(p);
  EXPECT_EQ(all.policy.weights.gpu, 100.0);
  EXPECT_EQ(all.policy.kv_cache.gpu, 100.0);
  EXPECT_EQ(all.cost.io_s, 0.0);
  EXPECT_EQ(all.cost.total_s, 0.05);
  p.gpu_capacity = 8ull << 30;  // 7 GiB must leave the GPU; host holds it all: no disk
  const TierSearchResult tight = search_tier_policy(p);
  EXPECT_LE(tight.cost.gpu_bytes, p.gpu_capacity);
  EXPECT_EQ(tight.cost.disk_bytes, 0u);
  EXPECT_GT(tight.cost.io_s, 0.0);
}

TEST(TierSearch, InfeasibleCapacityIsAClearError) {
  TierProblem p;
  p.weights_bytes = 100ull << 30;
  p.kv_cache_bytes = 20ull << 30;
  p.activation_bytes = 2ull << 30;
  p.gpu_capacity = 8ull << 30;
  p.cpu_capacity = 32ull << 30;
  p.disk_capacity = 16ull << 30;
  try {
    search_tier_policy(p);
    FAIL() << "122 GiB fitted 56 GiB";
  } catch (const InfeasibleBudgetError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("do not fit GPU 8.00 GiB + CPU 32.00 GiB + disk 16.00 GiB"), std::string::npos) << w;
    EXPECT_EQ(e.min_budget_bytes(), tier_min_gpu_bytes(p));
    TierProblem roomy = p;
    roomy.gpu_capacity = e.min_budget_bytes();
    EXPECT_NO_THROW(search_tier_policy(roomy));  // the GPU size it names is enough
  }
  // A fixed split that overflows the CPU at any GPU size is a ConfigError naming it.
  TierProblem fixed = p;
  fixed.fixed["weights"] = {0, 100};
  try {
    search_tier_policy(fixed);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tiers.weights"), std::string::npos) << e.what();
  }
  TierProblem bad = p;
  bad.step_percent = 7;
  EXPECT_THROW(search_tier_policy(bad), ConfigError);
  bad = p;
  bad.host_to_device_bytes_per_s = 0;
  EXPECT_THROW(search_tier_policy(bad), ConfigError);
}

TEST(TierSearch, ProblemFromAGraphAndHardware) {
  const ModelGraph g = fixture_graph("llama7b_infer.json");
  const Hardware hw = fixture_hardware("gpu_24gib.json");
  const TierProblem p = tier_problem(g, hw, Config::from_json_text("{}"));
  std::uint64_t w = 0, kv = 0;
  for (const auto& l : g.layers) w += l.param_bytes + l.buffer_bytes, kv += l.kv_cache_bytes;
  EXPECT_EQ(p.weights_bytes, w);
  EXPECT_EQ(p.kv_cache_bytes, kv);
  EXPECT_GT(p.activation_bytes, 0u);
  EXPECT_EQ(p.cpu_capacity, hw.host_available_bytes / 2);
  EXPECT_EQ(p.disk_capacity, hw.offload_dir_free_bytes);
  EXPECT_GT(p.compute_s, 0.0);
  const TierSearchResult r = search_tier_policy(p);
  EXPECT_LE(r.cost.gpu_bytes, p.gpu_capacity);
  EXPECT_LT(r.policy.weights.gpu + r.policy.kv_cache.gpu, 200.0);  // 29 GiB does not fit 21.6 GiB
}

}  // namespace
}  // namespace memscale::test
