// The KV-cache tier of each layer of an inference plan (LayerPlan.kv_tier): which layers
// carry one, the tier the engine's ledger gives an offloaded one, the split it realises,
// and the inference rule that keeps the activations between layers on the device.
#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

/// An inference decoder: embedding and head of 1 MB without a KV cache, `blocks` blocks of
/// 1 MB of weights, each with a 2 MB KV cache (the cache dominates the step).
ModelGraph kv_decoder(int blocks) { return inference_decoder(blocks, 1'000'000, 1'000'000, 2'000'000); }

Hardware cpu_only() { return cpu_only_hardware(); }

/// One GPU whose host tier holds `host_bytes` (pinned_limit_bytes), disk beyond it.
Hardware one_gpu(std::uint64_t host_bytes) {
  Hardware hw = cpu_only();
  Device d;
  d.total_bytes = d.free_bytes = 24ull << 30;
  hw.devices.push_back(d);
  hw.pinned_limit_bytes = host_bytes;
  return hw;
}

/// Weights stay where they are, so only the KV caches can make room.
Config kv_only(std::uint64_t budget, const std::string& extra = "") {
  return budget_config(budget, "\"techniques\": {\"offload_weights\": \"off\"}" + (extra.empty() ? "" : ", " + extra));
}

/// Bytes-weighted share (%) of the graph's KV cache on `tier` according to the plan's layers.
double kv_share(const ModelGraph& g, const Plan& p, const std::string& tier) {
  std::uint64_t total = 0, on = 0;
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    total += g.layers[l].kv_cache_bytes;
    if (p.layers[l].kv_tier == tier) on += g.layers[l].kv_cache_bytes;
  }
  return 100.0 * static_cast<double>(on) / static_cast<double>(total);
}

std::size_t count_tier(const Plan& p, const std::string& tier) {
  std::size_t n = 0;
  for (const auto& l : p.layers) n += l.kv_tier == tier;
  return n;
}

TEST(KvTiers, EachLayerCarriesTheTierTheEngineGaveItsKvCache) {
  const ModelGraph g = kv_decoder(6);
  const std::uint64_t peak = unoptimized_peak(g, cpu_only());
  const Plan p = plan(g, cpu_only(), kv_only(peak - 3'000'000));
  ASSERT_LE(p.predicted_peak_bytes, p.budget_bytes);
  for (std::size_t l = 0; l < g.layers.size(); ++l) {
    const LayerPlan& lp = p.layers[l];
    EXPECT_EQ(lp.activation_tier, "device") << lp.name;  // inference moves no activations
    if (g.layers[l].kv_cache_bytes == 0) {
      EXPECT_EQ(lp.kv_tier, "none") << lp.name;
      continue;
    }
    // A CPU-only machine: host RAM is the device, the tier below it is disk.
    EXPECT_EQ(lp.kv_tier, lp.has("offload_activations") ? "disk" : "device") << lp.name;
  }
  // Some caches had to leave the device and some did not: the budget asks for part of them.
  EXPECT_GT(count_tier(p, "disk"), 0u);
  EXPECT_GT(count_tier(p, "device"), 0u);
  // The realised split is the per-layer tiers, weighted by bytes.
  ASSERT_TRUE(p.tier_policy.used);
  EXPECT_DOUBLE_EQ(p.tier_policy.policy.kv_cache.gpu, kv_share(g, p, "device"));
  EXPECT_DOUBLE_EQ(p.tier_policy.policy.kv_cache.cpu, 0.0);
  EXPECT_EQ(p.tier_policy.policy.activations, (TierSplit{100.0, 0.0}));
  // Deterministic: the same inputs give the same tiers.
  EXPECT_EQ(plan(g, cpu_only(), kv_only(peak - 3'000'000)), p);
  EXPECT_NE(plan_summary(p).find("KV cache per layer: "), std::string::npos) << plan_summary(p);
}

TEST(KvTiers, OnAGpuTheHostTakesCachesUntilItIsFullThenDisk) {
  const ModelGraph g = kv_decoder(6);
  const Hardware hw = one_gpu(4'000'000);  // room for two 2 MB caches on the host
  // min_memory: every cache the rules can move leaves the device.
  const Plan p = plan(g, hw, kv_only(unoptimized_peak(g, hw), "\"mode\": \"min_memory\""));
  std::size_t offloaded = 0;
  for (const auto& l : p.layers) offloaded += l.has("offload_activations");
  ASSERT_GE(offloaded, 3u) << p.to_json_text();
  EXPECT_EQ(count_tier(p, "host"), 2u);
  EXPECT_EQ(count_tier(p, "disk"), offloaded - 2);
  EXPECT_DOUBLE_EQ(p.tier_policy.policy.kv_cache.cpu, kv_share(g, p, "host"));
  EXPECT_DOUBLE_EQ(p.tier_policy.policy.kv_cache.disk(), kv_share(g, p, "disk"));
}

TEST(KvTiers, AFixedKvSplitIsRealisedPerLayer) {
  const ModelGraph g = kv_decoder(6);
  const Plan p = plan(g, cpu_only(), budget_config(1ull << 30, R"("tiers": {"kv_cache": {"gpu": 50, "cpu": 0}})"));
  EXPECT_EQ(count_tier(p, "disk"), 3u);
  EXPECT_EQ(count_tier(p, "device"), 3u);
  EXPECT_EQ(count_tier(p, "none"), 2u);
  EXPECT_DOUBLE_EQ(p.tier_policy.policy.kv_cache.gpu, 50.0);
  for (const auto& l : p.layers)
    if (l.kv_tier == "disk") EXPECT_TRUE(l.has("offload_activations")) << l.name;
}

TEST(KvTiers, RoundTripsThroughJsonAndOlderPlansLoad) {
  const ModelGraph g = kv_decoder(4);
  const Plan p = plan(g, cpu_only(), budget_config(1ull << 30, R"("tiers": {"kv_cache": {"gpu": 50, "cpu": 0}})"));
  EXPECT_EQ(Plan::from_json_text(p.to_json_text()).to_json_text(), p.to_json_text());
  nlohmann::json j = nlohmann::json::parse(p.to_json_text());
  for (auto& l : j["layers"]) l.erase("kv_tier");
  for (const auto& l : Plan::from_json_text(j.dump()).layers) EXPECT_EQ(l.kv_tier, "none");
  j["layers"][1]["kv_tier"] = "gpu";
  try {
    Plan::from_json_text(j.dump());
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("plan.layers[1].kv_tier"), std::string::npos) << e.what();
  }
}

TEST(KvTiers, InferenceActivationsOffTheDeviceAreAConfigError) {
  const ModelGraph g = kv_decoder(2);
  try {
    plan(g, cpu_only(), budget_config(1ull << 30, R"("tiers": {"activations": {"gpu": 50, "cpu": 0}})"));
    FAIL();
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(R"(tiers.activations: got {"gpu": 50, "cpu": 0})"), std::string::npos) << what;
    EXPECT_NE(what.find("allowed: gpu 100"), std::string::npos) << what;
  }
  try {
    tier_problem(g, cpu_only(), budget_config(1ull << 30, R"("tiers": {"activations": {"gpu": 0, "cpu": 100}})"));
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tiers.activations: got"), std::string::npos) << e.what();
  }
  // All on the device is allowed, and a training graph ignores tiers.
  EXPECT_NO_THROW(plan(g, cpu_only(), budget_config(1ull << 30, R"("tiers": {"activations": {"gpu": 100, "cpu": 0}})")));
  ModelGraph train = g;
  train.training = true;
  train.optimizer = "sgd";
  for (auto& l : train.layers) l.kv_cache_bytes = 0;
  EXPECT_NO_THROW(plan(train, cpu_only(), budget_config(1ull << 30, R"("tiers": {"activations": {"gpu": 0, "cpu": 0}})")));
  // The tier search of an inference graph leaves the activations on the device.
  const TierProblem problem = tier_problem(g, cpu_only(), budget_config(1ull << 30));
  ASSERT_EQ(problem.fixed.count("activations"), 1u);
  EXPECT_EQ(problem.fixed.at("activations"), (TierSplit{100.0, 0.0}));
  EXPECT_EQ(search_tier_policy(problem).policy.activations, (TierSplit{100.0, 0.0}));
}

TEST(KvTiers, SplitRuleByPosition) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split_layer_tiers(4, {50, 0}, false), (V{"device", "device", "disk", "disk"}));
  EXPECT_EQ(split_layer_tiers(4, {25, 50}, true), (V{"device", "host", "host", "disk"}));
  EXPECT_EQ(split_layer_tiers(4, {25, 50}, false), (V{"device", "device", "device", "disk"}));  // host is RAM
  EXPECT_EQ(split_layer_tiers(3, {50, 0}, true), (V{"device", "device", "disk"}));              // 1.5 rounds up
  EXPECT_EQ(split_layer_tiers(2, {0, 0}, true), (V{"disk", "disk"}));
  EXPECT_TRUE(split_layer_tiers(0, {50, 0}, true).empty());
}

}  // namespace
}  // namespace memscale::test
