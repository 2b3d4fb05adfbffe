#include <gtest/gtest.h>

#include "memscale/core/hardware.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"

namespace memscale {
namespace {

ModelGraph sample_graph() {
  ModelGraph g;
  g.model_name = "Tiny";
  g.batch = 2;
  g.seq = 16;
  g.input_bytes = 256;
  for (int i = 0; i < 3; ++i) {
    Layer l;
    l.index = i;
    l.name = "blocks." + std::to_string(i);
    l.kind = "block";
    l.param_bytes = 1000 + i;
    l.grad_bytes = 1000 + i;
    l.optimizer_bytes = 2000 + 2 * i;
    l.activation_bytes = 500;
    l.transient_bytes = 50;
    l.dims.hidden = 64;
    l.tileable = {"seq"};
    g.layers.push_back(l);
  }
  return g;
}

TEST(ModelGraph, JsonRoundTripIsIdentity) {
  const ModelGraph g = sample_graph();
  const ModelGraph back = ModelGraph::from_json_text(g.to_json_text());
  EXPECT_EQ(g, back);
  EXPECT_EQ(g.to_json_text(), back.to_json_text());
}

TEST(ModelGraph, RejectsBadDocumentsNamingTheKey) {
  nlohmann::json j = nlohmann::json::parse(sample_graph().to_json_text());
  j["layers"][1]["kind"] = "transformer";
  EXPECT_THROW(
      {
        try {
          ModelGraph::from_json_text(j.dump());
        } catch (const ConfigError& e) {
          EXPECT_NE(std::string(e.what()).find("graph.layers[1].kind: got \"transformer\""), std::string::npos) << e.what();
          throw;
        }
      },
      ConfigError);
  j = nlohmann::json::parse(sample_graph().to_json_text());
  j["layers"][2]["index"] = 7;
  EXPECT_THROW(ModelGraph::from_json_text(j.dump()), ConfigError);
  j = nlohmann::json::parse(sample_graph().to_json_text());
  j["layers"][0].erase("param_bytes");
  EXPECT_THROW(ModelGraph::from_json_text(j.dump()), ConfigError);
  EXPECT_THROW(ModelGraph::from_json_text("{not json"), ConfigError);
}

TEST(Hardware, JsonRoundTripAndPlanningDevice) {
  Hardware h;
  h.host_total_bytes = 24ull << 30;
  h.host_available_bytes = 20ull << 30;
  EXPECT_EQ(h.planning_device_bytes(), 20ull << 30);
  EXPECT_EQ(h.gpu_count(), 0u);
  h.devices.push_back({"cuda", 0, "H100", 80ull << 30, 79ull << 30});
  h.devices.push_back({"cuda", 1, "H100", 80ull << 30, 79ull << 30});
  h.offload_dir = "/tmp";
  h.flops_per_s = 400000000000000ull;
  h.disk_read_bytes_per_s = 3000000000ull;
  EXPECT_EQ(h.planning_device_bytes(), 80ull << 30);
  EXPECT_EQ(h.gpu_count(), 2u);
  const Hardware back = Hardware::from_json_text(h.to_json_text());
  EXPECT_EQ(h, back);
  EXPECT_EQ(h.to_json_text(), back.to_json_text());
}

TEST(Plan, JsonRoundTripIsIdentity) {
  Plan p;
  p.budget_bytes = 1000;
  p.unoptimized_peak_bytes = 1500;
  p.predicted_peak_bytes = 950;
  p.pressure = 1.5;
  LayerPlan l;
  l.index = 0;
  l.name = "blocks.0";
  l.kind = "block";
  l.techniques = {"checkpoint", "tile"};
  l.tile_chunks = 4;
  l.bytes_before = 500;
  l.bytes_after = 100;
  l.before = {300, 300, 600, 200, 0};
  l.after = {300, 300, 600, 40, 0};
  l.rules = {"CK1"};
  l.reasons = {"most activation bytes per FLOP"};
  p.layers.push_back(l);
  p.rejected.push_back({"blocks.0", "offload_weights", "OW1", "not needed"});
  p.trace = {"pressure 1.50"};
  p.reservation.used = true;
  p.reservation.bytes = 10;
  p.reservation.safety_factor = 2.0;
  p.reservation.calibrated = true;
  p.reservation.calibration_samples = 3;
  p.reservation.source = "scaled";
  p.tier_policy.used = true;
  p.tier_policy.policy.weights = {20, 30};
  p.tier_policy.total_s = 0.5;
  p.offload.policy = "pinned_hot_set";
  p.offload.hot_set = {"emb", "head"};
  const Plan back = Plan::from_json_text(p.to_json_text());
  EXPECT_EQ(p, back);
  EXPECT_EQ(p.to_json_text(), back.to_json_text());
  EXPECT_TRUE(back.layers[0].has("tile"));
  EXPECT_FALSE(back.layers[0].has("offload_weights"));
}

}  // namespace
}  // namespace memscale
