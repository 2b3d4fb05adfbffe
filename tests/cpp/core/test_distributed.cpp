// The per-rank memory model of a torch.distributed graph (distributed.hpp, rules/distributed.hpp):
// FSDP2's gathered / prefetched / reduce-scatter bytes and DDP's buckets are charged where the
// step holds them, a CPU host's RAM is shared by its local ranks, and the plan names the rule.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "engine_fixtures.hpp"
#include "memscale/core/engine.hpp"
#include "memscale/core/memory_model.hpp"

namespace memscale {
namespace {

// Two blocks between an embedding and a head: 1 MB activations each, 4 MB params per block.
ModelGraph chain() {
  ModelGraph g;
  g.model_name = "chain";
  g.optimizer = "sgd";
  for (int i = 0; i < 4; ++i) {
    Layer l;
    l.index = i;
    l.name = "l" + std::to_string(i);
    l.kind = i == 0 ? "embedding" : i == 3 ? "lm_head" : "block";
    l.param_bytes = l.grad_bytes = 4'000'000;
    l.activation_bytes = 1'000'000;
    l.input_bytes = l.output_bytes = 100'000;
    l.transient_bytes = 200'000;
    g.layers.push_back(l);
  }
  return g;
}

Hardware cpu_host(std::uint64_t bytes) {
  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = bytes;
  return hw;
}

std::int64_t peak(const ModelGraph& g, bool ddp_buckets = false) {
  model::StepContext ctx;
  ctx.data_parallel = ddp_buckets;
  return static_cast<std::int64_t>(model::evaluate(g, std::vector<model::LayerState>(g.layers.size()), ctx).peak);
}

TEST(Distributed, JsonRoundTripAndAbsentWhenNotDistributed) {
  ModelGraph g = chain();
  EXPECT_EQ(g.to_json_text().find("distributed"), std::string::npos);
  EXPECT_EQ(g.to_json_text().find("sharding"), std::string::npos);
  g.distributed = Distributed{"fsdp2", 4, 2, false, 0};
  g.layers[1].sharding = LayerSharding{16'000'000, 0, 8, 16'000'000};
  const ModelGraph back = ModelGraph::from_json_text(g.to_json_text());
  EXPECT_EQ(back, g);
}

TEST(Distributed, InvalidFieldsAreConfigErrorsNamingThem) {
  auto parse = [](const std::string& d) {
    return ModelGraph::from_json_text(R"({"layers": [{"index": 0, "name": "a", "kind": "block", "param_bytes": 1,
      "activation_bytes": 1}], "distributed": )" + d + "}");
  };
  try {
    parse(R"({"engine": "deepspeed"})");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("graph.distributed.engine"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("fsdp2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse(R"({"engine": "ddp", "world_size": 0})"), ConfigError);
  EXPECT_THROW(parse(R"({"engine": "ddp", "world_size": 2, "local_world_size": 3})"), ConfigError);
}

TEST(Distributed, FsdpWindowsAreChargedWhereTheStepHoldsThem) {
  const ModelGraph plain = chain();
  ModelGraph g = plain;
  // Block l2 is all-gathered (16 MB) around its compute; its backward prefetches the block
  // before it (16 MB) and copies 16 MB of full-size gradients into the reduce-scatter input.
  g.layers[2].sharding = LayerSharding{16'000'000, 0, 16'000'000, 16'000'000};
  const auto positions = model::training_timeline(g, std::vector<model::LayerState>(4), model::StepContext{});
  const auto base = model::training_timeline(plain, std::vector<model::LayerState>(4), model::StepContext{});
  ASSERT_EQ(positions.size(), base.size());
  for (std::size_t i = 0; i < positions.size(); ++i) {
    const std::int64_t extra = positions[i].bytes - base[i].bytes;
    if (std::string(positions[i].phase) == "forward" && positions[i].layer == 2)
      // gathering (its input, a copy of the 4 MB shard, and its output beside the unsharded
      // copy: 36 MB) outweighs computing on the unsharded copy (16 MB + its 1.3 MB working set)
      EXPECT_EQ(extra, 100'000 + 2 * 16'000'000 + 4'000'000 - (100'000 + 1'000'000 + 200'000));
    else if (std::string(positions[i].phase) == "backward" && positions[i].layer == 2)
      // its copy, the prefetched block, and the reduce-scatter input less the 1 MB it saved
      EXPECT_EQ(extra, 16'000'000 + 16'000'000 + 16'000'000 - 1'000'000);
    else
      EXPECT_EQ(extra, 0) << positions[i].phase << " " << positions[i].layer;
  }
  // A group kept gathered through the step is resident like its shard.
  ModelGraph kept = plain;
  kept.layers[0].sharding.kept_gathered_bytes = 12'000'000;
  EXPECT_EQ(peak(kept), peak(plain) + 12'000'000);
}

TEST(Distributed, DdpBucketsAddAGradientCopyToTheStaticBytes) {
  ModelGraph g = chain();
  g.distributed = Distributed{"ddp", 2, 1, false, 25 << 20};
  const Plan off = plan(g, cpu_host(1'000'000'000), test::budget_config(900'000'000, R"("mode": "off")"));
  EXPECT_EQ(static_cast<std::int64_t>(off.unoptimized_peak_bytes), peak(g, true));
  EXPECT_EQ(peak(g, true), peak(g) + 16'000'000);
  const auto& trace = off.trace;
  EXPECT_TRUE(std::any_of(trace.begin(), trace.end(), [](const std::string& line) {
    return line.rfind("distributed.per_rank: ddp over 2 ranks", 0) == 0;
  }));
}

TEST(Distributed, LocalRanksShareTheHostRam) {
  ModelGraph g = chain();
  g.distributed = Distributed{"fsdp2", 4, 4, false, 0};
  const Plan p = plan(g, cpu_host(4'000'000'000), Config::from_json_text(R"({"memory_budget": 0.5})"));
  EXPECT_EQ(p.budget_bytes, 500'000'000u);  // half of a quarter of the host
  bool named = false;
  for (const auto& line : p.trace) named |= line.find("distributed.shared_host") != std::string::npos;
  EXPECT_TRUE(named);
  g.distributed.engine = "none";
  g.distributed.local_world_size = 1;
  g.distributed.world_size = 1;
  EXPECT_EQ(plan(g, cpu_host(4'000'000'000), Config::from_json_text(R"({"memory_budget": 0.5})")).budget_bytes,
            2'000'000'000u);
}

TEST(Distributed, ShardedGraphPlansWithinItsPerRankBudget) {
  ModelGraph g = chain();
  g.distributed = Distributed{"fsdp2", 2, 1, false, 0};
  for (int i = 1; i <= 2; ++i) g.layers[i].sharding = LayerSharding{8'000'000, 0, i == 2 ? 8'000'000u : 0u, 8'000'000};
  const Plan unopt = plan(g, cpu_host(1'000'000'000), test::budget_config(900'000'000, R"("mode": "off")"));
  const std::uint64_t budget = unopt.unoptimized_peak_bytes - 1'000'000;
  const Plan p = plan(g, cpu_host(1'000'000'000), test::budget_config(budget, R"("force_optimize": true)"));
  EXPECT_LE(p.predicted_peak_bytes, budget);
  EXPECT_EQ(p.unoptimized_peak_bytes, unopt.unoptimized_peak_bytes);
}

}  // namespace
}  // namespace memscale
