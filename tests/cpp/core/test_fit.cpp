// Fit advisor core: scaling reproduces profiled graphs, and the search answer is the
// engine's boundary (the answer fits, the next size does not).
#include <gtest/gtest.h>

#include "engine_fixtures.hpp"
#include "memscale/core/fit.hpp"

namespace memscale::test {
namespace {

/// A small decoder as a profiler would record it at batch b x seq s: activations linear in
/// tokens, the attention scores quadratic in seq, weights independent of both.
ModelGraph toy(std::int64_t b, std::int64_t s) {
  ModelGraph g;
  g.model_name = "Toy";
  g.batch = b, g.seq = s;
  g.optimizer = "adamw";
  const std::uint64_t tokens = static_cast<std::uint64_t>(b * s), h = 64, e = 4;
  g.input_bytes = tokens * 8;
  auto add = [&](const std::string& name, const std::string& kind, std::uint64_t params, std::uint64_t act,
                 std::uint64_t transient) {
    Layer l;
    l.index = static_cast<std::int64_t>(g.layers.size());
    l.name = name, l.kind = kind;
    l.param_bytes = params, l.grad_bytes = params, l.optimizer_bytes = 2 * params;
    l.activation_bytes = act, l.transient_bytes = transient;
    l.input_bytes = tokens * h * e, l.output_bytes = tokens * h * e;
    l.flops = 2 * tokens * params / e;
    l.dims.hidden = static_cast<std::int64_t>(h), l.dims.batch = b, l.dims.seq = s;
    l.tileable = {"seq"};
    g.layers.push_back(l);
  };
  add("embed", "embedding", 512 * h * e, tokens * 8, tokens * h * e);
  for (int i = 0; i < 4; ++i) {
    const std::string p = "blocks." + std::to_string(i);
    const std::uint64_t scores = static_cast<std::uint64_t>(b * 4 * s * s) * e;  // heads x seq x seq
    add(p + ".attn", "attention", 4 * h * h * e, 4 * tokens * h * e + scores, scores);
    add(p + ".mlp", "mlp", 8 * h * h * e, 9 * tokens * h * e, 4 * tokens * h * e);
  }
  add("head", "lm_head", 512 * h * e, tokens * 512 * e, 2 * tokens * 512 * e);
  return g;
}

TEST(FitScaling, LinearInBatchReproducesTheProfileExactly) {
  const GraphScaling s({toy(1, 32), toy(2, 32)}, {1, 2}, "batch");
  for (std::int64_t b : {1, 2, 3, 7, 64, 1000}) EXPECT_EQ(s.at(b), toy(b, 32)) << "batch " << b;
  EXPECT_FALSE(s.any_quadratic());
}

TEST(FitScaling, QuadraticInSeqWhereTheProfilesShowIt) {
  const GraphScaling s({toy(2, 64), toy(2, 16), toy(2, 32)}, {64, 16, 32}, "seq");  // any order
  EXPECT_TRUE(s.any_quadratic());
  for (std::int64_t q : {16, 48, 128, 1000}) EXPECT_EQ(s.at(q), toy(2, q)) << "seq " << q;
  // the mlp's terms are linear: three collinear points fit a line
  const TermFit mlp = s.term([](const ModelGraph& g) { return g.layers[2].activation_bytes; });
  EXPECT_FALSE(mlp.quadratic());
  const TermFit attn = s.term([](const ModelGraph& g) { return g.layers[1].activation_bytes; });
  EXPECT_TRUE(attn.quadratic());
}

TEST(FitScaling, NegativeCurvatureFallsBackToTheOuterLine) {
  const TermFit f = TermFit::through({1, 2, 4}, {100, 250, 300});
  EXPECT_FALSE(f.quadratic());
  EXPECT_DOUBLE_EQ(static_cast<double>(f.at(1)), 100.0);
  EXPECT_DOUBLE_EQ(static_cast<double>(f.at(4)), 300.0);
}

TEST(FitScaling, RejectsProfilesOfDifferentModelsAndBadDimensions) {
  ModelGraph other = toy(2, 32);
  other.layers.pop_back();
  EXPECT_THROW(GraphScaling({toy(1, 32), other}, {1, 2}, "batch"), ConfigError);
  EXPECT_THROW(GraphScaling({toy(1, 32), toy(2, 32)}, {1, 2}, "foo"), ConfigError);
  EXPECT_THROW(GraphScaling({toy(1, 32), toy(1, 32)}, {1, 1}, "batch"), ConfigError);
  EXPECT_THROW(GraphScaling({toy(1, 32)}, {1}, "batch"), ConfigError);
}

TEST(FitSearch, AnswerIsTheEnginesBoundaryInBatch) {
  const Hardware hw = cpu_only_hardware();
  const GraphScaling s({toy(1, 128), toy(2, 128)}, {1, 2}, "batch");
  const std::uint64_t floor = min_budget_bytes(toy(1, 128), hw, Config{});
  for (std::uint64_t budget : {floor, floor * 3 / 2, floor * 4, floor * 20}) {
    const Config c = budget_config(budget);
    const FitSearchResult r = fit_search(s, hw, c, {1, 1 << 16});
    ASSERT_FALSE(r.capped) << budget;
    const Plan at = plan(toy(r.size, 128), hw, c);
    EXPECT_LE(at.predicted_peak_bytes, budget);
    EXPECT_EQ(at.to_json_text(), r.plan.to_json_text());
    EXPECT_THROW(plan(toy(r.size + 1, 128), hw, c), InfeasibleBudgetError) << "budget " << budget << " size " << r.size;
    // deterministic: the same questions in the same order
    const FitSearchResult again = fit_search(s, hw, c, {1, 1 << 16});
    ASSERT_EQ(again.probes.size(), r.probes.size());
    for (std::size_t i = 0; i < r.probes.size(); ++i) EXPECT_EQ(again.probes[i].size, r.probes[i].size);
  }
}

TEST(FitSearch, AnswerIsTheEnginesBoundaryInSeq) {
  const Hardware hw = cpu_only_hardware();
  const GraphScaling s({toy(2, 16), toy(2, 32), toy(2, 64)}, {16, 32, 64}, "seq");
  // feasibility is monotone in size up to the divisibility of tile chunks (a prime seq
  // tiles worse than 256): the answer is at least the last power of two that fits
  const std::uint64_t budget = min_budget_bytes(toy(2, 256), hw, Config{});
  const FitSearchResult r = fit_search(s, hw, budget_config(budget), {1, 1 << 14});
  EXPECT_GE(r.size, 256);
  EXPECT_NO_THROW(plan(toy(2, r.size), hw, budget_config(budget)));
  EXPECT_THROW(plan(toy(2, r.size + 1), hw, budget_config(budget)), InfeasibleBudgetError);
}

TEST(FitSearch, CappedAtMaxSizeAndRefusedBelowMinSize) {
  const Hardware hw = cpu_only_hardware();
  const GraphScaling s({toy(1, 32), toy(2, 32)}, {1, 2}, "batch");
  const FitSearchResult r = fit_search(s, hw, budget_config(1ull << 40), {1, 37});
  EXPECT_TRUE(r.capped);
  EXPECT_EQ(r.size, 37);
  const std::uint64_t floor = min_budget_bytes(toy(1, 32), hw, Config{});
  try {
    fit_search(s, hw, budget_config(floor - 1), {1, 64});
    FAIL() << "a budget below the minimum at batch 1 was accepted";
  } catch (const InfeasibleBudgetError& e) {
    EXPECT_EQ(e.min_budget_bytes(), floor);
    EXPECT_NE(std::string(e.what()).find("batch 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(fit_search(s, hw, budget_config(1ull << 40), {0, 4}), ConfigError);
}

TEST(FitSearch, MinBudgetIsTheEnginesRefusalMinimum) {
  const Hardware hw = cpu_only_hardware();
  const ModelGraph g = toy(4, 64);
  const std::uint64_t floor = min_budget_bytes(g, hw, Config{});
  EXPECT_EQ(floor, min_budget(g, hw));
  EXPECT_NO_THROW(plan(g, hw, budget_config(floor)));
  EXPECT_THROW(plan(g, hw, budget_config(floor - 1)), InfeasibleBudgetError);
}

}  // namespace
}  // namespace memscale::test
