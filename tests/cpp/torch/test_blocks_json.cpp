// One Plan JSON for both languages: a plan Python made for the GPT's PyTorch twin
// (tests/data/make_blocks_plan_fixture.py) applies to the libtorch model, and the plan
// plan_blocks makes is the committed C++ fixture that tests/python/test_cpp_plan_fixture.py
// applies in Python. MEMSCALE_WRITE_FIXTURES=1 rewrites the C++ fixture.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "../../../examples/cpp/tiny_gpt.hpp"
#include "memscale/core/engine.hpp"

namespace memscale {
namespace {

std::string data_file(const std::string& name) { return std::string(MEMSCALE_TEST_DATA_DIR) + "/" + name; }

std::string read(const std::string& name) {
  std::ifstream in(data_file(name));
  EXPECT_TRUE(in.good()) << data_file(name);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The GPT of make_blocks_plan_fixture.py, with the same seed for its inputs.
tiny_gpt::Options twin() { return {/*vocab=*/128, /*max_seq=*/64, /*width=*/64, /*heads=*/4, /*blocks=*/3}; }

std::vector<at::Tensor> grads(tiny_gpt::Gpt& model, const at::Tensor& ids, const at::Tensor& targets) {
  tiny_gpt::loss_of(model, ids, targets).backward();
  return tiny_gpt::take_grads(*model);
}

TEST(BlocksJson, APythonPlanAppliesToTheLibtorchModel) {
  const Plan plan = Plan::from_json_text(read("plans/python_gpt_blocks.json"));
  torch::manual_seed(0);
  tiny_gpt::Gpt model(twin());
  const at::Tensor ids = at::randint(128, {4, 32}, at::kLong), targets = at::randint(128, {4, 32}, at::kLong);
  const auto plain = grads(model, ids, targets);
  model->runner.apply(plan, "blocks");
  std::size_t checkpointed = 0;
  for (const auto& layer : plan.layers) {
    if (layer.name.rfind("blocks.", 0) != 0) continue;
    const std::size_t i = std::stoul(layer.name.substr(7));
    EXPECT_EQ(model->runner.planned(i).techniques, layer.techniques) << layer.name;
    checkpointed += layer.has("checkpoint");
  }
  EXPECT_GT(checkpointed, 0u);
  EXPECT_LT(checkpointed, model->runner.size()) << "the fixture mixes checkpointed and plain blocks";
  const auto ours = grads(model, ids, targets);
  ASSERT_EQ(plain.size(), ours.size());
  for (std::size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::allclose(plain[i], ours[i], 1e-5, 1e-6)) << i;
}

TEST(BlocksJson, TheCppPlanIsTheCommittedFixture) {
  const Hardware hw = Hardware::from_json_text(read("hardware/cpu_24gib.json"));
  torch::manual_seed(0);
  tiny_gpt::Gpt model(twin());
  const at::Tensor ids = at::randint(128, {4, 32}, at::kLong);
  auto forward = [model](const at::Tensor& t) mutable { return model->forward(t); };
  const ModelGraph graph = profile_blocks(*model, model->runner, forward, ids, {true, "adam", false});
  Config config = Config::from_json_text(R"({"memory_budget": "1GiB", "force_optimize": true})");
  config.memory_budget.bytes = plan(graph, hw, config).unoptimized_peak_bytes * 85 / 100;
  const Plan made = plan_blocks(*model, model->runner, config, forward, ids, {true, "adam", false}, hw);
  std::size_t checkpointed = 0;
  for (std::size_t i = 0; i < model->runner.size(); ++i) checkpointed += model->runner.planned(i).has("checkpoint");
  EXPECT_GT(checkpointed, 0u);
  const std::string name = "plans/cpp_gpt_blocks.json";
  if (const char* write = std::getenv("MEMSCALE_WRITE_FIXTURES"); write && std::string(write) == "1") {
    std::ofstream(data_file(name)) << made.to_json_text() << "\n";
    GTEST_SKIP() << "wrote " << data_file(name);
  }
  const Plan committed = Plan::from_json_text(read(name));
  ASSERT_EQ(committed.layers.size(), made.layers.size());
  for (std::size_t i = 0; i < made.layers.size(); ++i) {
    EXPECT_EQ(committed.layers[i].name, made.layers[i].name);
    EXPECT_EQ(committed.layers[i].techniques, made.layers[i].techniques) << made.layers[i].name;
  }
}

}  // namespace
}  // namespace memscale
