// memscale::Blocks on a GPT written as a libtorch module with a custom forward
// (examples/cpp/tiny_gpt.hpp): per-block checkpoint and tiling keep gradients, the measured
// step peak meets a budget of half the unoptimized peak, names are unchanged, paged
// serving gives the resident model's tokens within budget, and plans the C++ runtime
// cannot apply are refused.
#include <torch/csrc/autograd/grad_mode.h>

#include <gtest/gtest.h>

#include "gpt_steps.hpp"
#include "memscale/core/errors.hpp"

namespace memscale {
namespace {

Hardware host(std::uint64_t bytes) {
  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = bytes;
  return hw;
}

using test_util::Batch;
using test_util::batch;
using test_util::expect_equal_grads;
using test_util::forward_of;
using test_util::step_grads;

tiny_gpt::Options small() { return {/*vocab=*/128, /*max_seq=*/64, /*width=*/64, /*heads=*/4, /*blocks=*/3}; }

Config budget_config(std::uint64_t bytes, const std::string& extra = "") {
  return Config::from_json_text(R"({"memory_budget": )" + std::to_string(bytes) + extra + "}");
}

TEST(Blocks, CheckpointAndTilePerBlockKeepGradients) {
  torch::manual_seed(0);
  tiny_gpt::Gpt model(small());
  const Batch data = batch(4, 32, 128);
  const auto plain = step_grads(model, data);
  for (const char* techniques : {R"({"checkpoint": "on", "tiling": "off"})", R"({"tiling": "on"})"}) {
    const Config config = Config::from_json_text(std::string(R"({"memory_budget": "1GiB", "force_optimize": true, "techniques": )") +
                                                 techniques + "}");
    const Plan plan = plan_blocks(*model, model->runner, config, forward_of(model), data.ids, {true, "adam", true}, host(8ull << 30));
    std::size_t applied = 0;
    for (std::size_t i = 0; i < model->runner.size(); ++i)
      applied += model->runner.planned(i).has("checkpoint") || model->runner.planned(i).has("tile");
    EXPECT_EQ(applied, model->runner.size()) << techniques;
    for (const auto& layer : plan.layers)
      if (layer.name.find(':') != std::string::npos) EXPECT_TRUE(layer.techniques.empty()) << layer.name;
    expect_equal_grads(plain, step_grads(model, data));
  }
}

TEST(Blocks, StepPeakWithinHalfTheUnoptimizedPeak) {
  torch::manual_seed(1);
  tiny_gpt::Gpt model(tiny_gpt::Options{128, 128, 64, 4, 4});
  const Batch data = batch(8, 128, 128);
  auto step = [&] { test_util::adam_step(model, data); };
  // Equal weights for both runs: restore them after the plain step.
  test_util::SavedWeights weights(*model);
  const std::uint64_t unoptimized = tiny_gpt::measured_peak(*model, step);
  weights.restore();
  const std::uint64_t budget = unoptimized / 2;
  const Plan plan = plan_blocks(*model, model->runner, budget_config(budget), forward_of(model), data.ids,
                                {true, "adam", true}, host(8ull << 30));
  EXPECT_FALSE(plan.skipped);
  const std::uint64_t planned = tiny_gpt::measured_peak(*model, step);
  EXPECT_LE(static_cast<double>(planned), 1.05 * static_cast<double>(budget))
      << "unoptimized " << unoptimized << ", budget " << budget << ", measured " << planned << ", predicted "
      << plan.predicted_peak_bytes;
  RecordProperty("unoptimized_peak_bytes", std::to_string(unoptimized));
  RecordProperty("predicted_peak_bytes", std::to_string(plan.predicted_peak_bytes));
  RecordProperty("planned_peak_bytes", std::to_string(planned));
}

TEST(Blocks, NamesUnchangedAndUnwrapRestoresPlainCalls) {
  torch::manual_seed(2);
  tiny_gpt::Gpt model(small());
  const Batch data = batch(2, 16, 128);
  std::vector<std::string> before;
  for (const auto& p : model->named_parameters()) before.push_back(p.key());
  plan_blocks(*model, model->runner, Config::from_json_text(R"({"memory_budget": "1GiB", "force_optimize": true,
      "techniques": {"checkpoint": "on", "tiling": "off"}})"), forward_of(model), data.ids, {true, "sgd"}, host(8ull << 30));
  ASSERT_TRUE(model->runner.applied());
  std::vector<std::string> after;
  for (const auto& p : model->named_parameters()) after.push_back(p.key());
  EXPECT_EQ(before, after);
  EXPECT_EQ(before.front(), "tokens.weight");
  const at::Tensor planned_out = model->forward(data.ids);
  EXPECT_EQ(planned_out.grad_fn()->next_edges().size() > 0, true);
  model->runner.unwrap();
  EXPECT_FALSE(model->runner.applied());
  EXPECT_FALSE(model->runner.planned(0).has("checkpoint"));
  EXPECT_TRUE(at::allclose(planned_out, model->forward(data.ids), 1e-5, 1e-6));
}

TEST(Blocks, PlansTheRuntimeCannotApplyAreRefused) {
  tiny_gpt::Gpt model(small());
  const Batch data = batch(2, 16, 128);
  const Plan plan = plan_blocks(*model, model->runner, Config::from_json_text(R"({"memory_budget": "1GiB"})"),
                                forward_of(model), data.ids, {true, "sgd"}, host(8ull << 30));
  // The engine was told: no weight paging while training.
  for (std::size_t i = 1; i + 1 < plan.layers.size(); ++i) EXPECT_FALSE(plan.layers[i].has("offload_weights"));
  Plan offloading = plan;
  offloading.layers[1].techniques = {"offload_weights"};
  try {
    model->runner.apply(offloading, "blocks");
    FAIL() << "applied offload_weights while training";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.0"), std::string::npos) << e.what();
  }
  Plan outside = plan;
  outside.layers.back().techniques = {"checkpoint"};
  EXPECT_THROW(model->runner.apply(outside, "blocks"), ConfigError);
  Plan other = plan;
  other.layers.erase(other.layers.begin() + 2);
  EXPECT_THROW(model->runner.apply(other, "blocks"), ConfigError);
}

TEST(Blocks, PagedServingGivesTheResidentTokensWithinBudget) {
  torch::manual_seed(3);
  tiny_gpt::Gpt model(tiny_gpt::Options{128, 64, 128, 4, 8});
  model->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor prompt = at::randint(128, {1, 8}, at::kLong);
  const at::Tensor resident = tiny_gpt::generate(model, prompt, 8);
  const std::uint64_t weights = tiny_gpt::tensor_bytes(*model);
  const std::uint64_t budget = static_cast<std::uint64_t>(static_cast<double>(weights) / 2.5);
  const Plan plan = plan_blocks(*model, model->runner, budget_config(budget), forward_of(model),
                                at::zeros({1, 16}, at::kLong), {false, "none"}, host(8ull << 30));
  ASSERT_NE(model->runner.pager(), nullptr) << plan.to_json_text();
  std::size_t paged = 0;
  for (std::size_t i = 0; i < model->runner.size(); ++i) paged += model->runner.planned(i).has("offload_weights");
  EXPECT_GT(paged, 0u);
  // Resident now: the weights outside the pager and the pinned blocks (the rest was evicted).
  std::uint64_t outside = 0;
  for (const auto& p : model->parameters()) outside += p.numel() * p.element_size();
  for (std::size_t i = 0; i < model->runner.size(); ++i) outside -= model->runner.storage()->layer_bytes(i);
  const std::uint64_t resident_now = outside + model->runner.pager()->stats().physical_bytes;
  at::Tensor served;
  std::int64_t peak = 0;
  {
    memory::CountingSession session;
    served = tiny_gpt::generate(model, prompt, 8);
    peak = session.stats().peak_bytes;
  }
  EXPECT_TRUE(at::equal(resident, served));
  const std::uint64_t resident_peak = resident_now + static_cast<std::uint64_t>(peak);
  EXPECT_LE(static_cast<double>(resident_peak), 1.05 * static_cast<double>(budget))
      << "weights " << weights << ", budget " << budget << ", resident peak " << resident_peak;
  RecordProperty("budget_bytes", std::to_string(budget));
  RecordProperty("resident_peak_bytes", std::to_string(resident_peak));
  EXPECT_GT(model->runner.pager()->stats().prefetch_loads, 0u);
  model->runner.unwrap();
  EXPECT_TRUE(at::equal(resident, tiny_gpt::generate(model, prompt, 8)));
}

}  // namespace
}  // namespace memscale
