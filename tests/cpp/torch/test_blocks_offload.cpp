// Activation offload per block in C++ (memscale's autograd engine answering the default
// saved-tensor hooks): gradients equal the plain module with offload alone and mixed with
// checkpointing, the measured step peak meets a budget of half the unoptimized peak with a
// plan that offloads, and it is refused under a foreign autograd engine or a bad directory.
#include <sys/stat.h>

#include <filesystem>

#include <torch/csrc/autograd/engine.h>

#include <gtest/gtest.h>

#include "gpt_steps.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/torch/saved_tensor_engine.hpp"
#include "temp_dir.hpp"

namespace memscale {
namespace {

namespace fs = std::filesystem;

using test_util::batch;
using test_util::expect_equal_grads;
using test_util::forward_of;
using test_util::step_grads;
using test_util::TempDir;

Hardware host_with_disk(const std::string& dir) {
  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = 8ull << 30;
  hw.offload_dir = dir;
  hw.offload_dir_free_bytes = 8ull << 30;
  return hw;
}

Config offload_config(const std::string& budget, const std::string& techniques) {
  return Config::from_json_text(R"({"memory_budget": )" + budget + R"(, "force_optimize": true, "techniques": )" +
                                techniques + "}");
}

const char* kOffloadOnly = R"({"offload_activations": "on", "checkpoint": "off", "tiling": "off"})";

std::string techniques_of(const Plan& plan) {
  std::string out;
  for (const auto& layer : plan.layers) {
    out += layer.name + "=";
    for (const auto& t : layer.techniques) out += t + (t == "offload_activations" ? "->" + layer.activation_tier : "") + "+";
    out += " ";
  }
  return out;
}

TEST(BlocksOffload, OffloadAndMixedWithCheckpointKeepGradients) {
  torch::manual_seed(0);
  TempDir dir;
  tiny_gpt::Gpt model(tiny_gpt::Options{128, 64, 64, 4, 3});
  const test_util::Batch data = batch(4, 32, 128);
  const auto plain = step_grads(model, data);
  const DiskTierOptions disk{dir.path.string()};
  const Plan plan = plan_blocks(*model, model->runner, offload_config("\"1GiB\"", kOffloadOnly), forward_of(model), data.ids,
                                {true, "adam", true}, host_with_disk(dir.path.string()), disk);
  for (std::size_t i = 0; i < model->runner.size(); ++i) {
    EXPECT_TRUE(model->runner.planned(i).has("offload_activations")) << techniques_of(plan);
    EXPECT_EQ(model->runner.planned(i).activation_tier, "disk");
  }
  ASSERT_NE(model->runner.activations(), nullptr);
  const std::string store_dir = model->runner.activations()->directory();
  EXPECT_EQ(fs::path(store_dir).parent_path(), dir.path);
  {
    const at::Tensor loss = tiny_gpt::loss_of(model, data.ids, data.targets);
    const ActivationStoreStats after_forward = model->runner.activations()->stats();
    EXPECT_GT(after_forward.tensors_moved, 0u);
    EXPECT_GT(after_forward.bytes_moved, 0u);
    EXPECT_GT(after_forward.records_live, 0u);
    EXPECT_FALSE(fs::is_empty(store_dir));  // the saved tensors are on disk
    loss.backward();
  }
  expect_equal_grads(plain, tiny_gpt::take_grads(*model));
  const ActivationStoreStats after_backward = model->runner.activations()->stats();
  EXPECT_EQ(after_backward.records_live, 0u);  // autograd released them: files removed
  EXPECT_TRUE(fs::is_empty(store_dir));
  EXPECT_GE(after_backward.bytes_reloaded, after_backward.bytes_moved);
  RecordProperty("offloaded_bytes_per_step", std::to_string(after_backward.bytes_moved));

  // Mixed: offload alone, checkpoint + offload (its saved input goes to disk), checkpoint alone.
  Plan mixed = plan;
  for (auto& layer : mixed.layers) {
    if (layer.name == "blocks.0") layer.techniques = {"offload_activations"};
    if (layer.name == "blocks.1") layer.techniques = {"checkpoint", "offload_activations"};
    if (layer.name == "blocks.2") layer.techniques = {"checkpoint"};
  }
  model->runner.apply(mixed, "blocks", disk);
  expect_equal_grads(plain, step_grads(model, data));
  EXPECT_GT(model->runner.activations()->stats().tensors_moved, 0u);
  EXPECT_EQ(model->runner.activations()->stats().records_live, 0u);
  model->runner.unwrap();
  EXPECT_EQ(model->runner.activations(), nullptr);
  EXPECT_FALSE(fs::exists(store_dir));
  EXPECT_FALSE(saved_tensor_engine_unavailable().has_value());
  EXPECT_EQ(&torch::autograd::Engine::get_default_engine(), &torch::autograd::Engine::get_base_engine());
  expect_equal_grads(plain, step_grads(model, data));
}

TEST(BlocksOffload, StepPeakWithinHalfTheUnoptimizedPeakWhenOffloading) {
  torch::manual_seed(1);
  TempDir dir;
  // Offload alone meets half the peak when the weights, their optimizer state and one
  // block's backward working set fit well under it: eight blocks, activations well above
  // the weights (four blocks of seq 128 need 105% of the budget, eight of batch 8 112%).
  tiny_gpt::Gpt model(tiny_gpt::Options{128, 64, 64, 4, 8});
  const test_util::Batch data = batch(16, 64, 128);
  auto step = [&] { test_util::adam_step(model, data); };
  test_util::SavedWeights weights(*model);
  const std::uint64_t unoptimized = tiny_gpt::measured_peak(*model, step);
  weights.restore();
  const std::uint64_t budget = unoptimized / 2;
  const Hardware hw = host_with_disk(dir.path.string());
  const DiskTierOptions disk{dir.path.string()};
  // What the engine picks unforced (every technique allowed), for the record.
  const Plan unforced = plan_blocks(*model, model->runner, Config::from_json_text(R"({"memory_budget": )" +
                                    std::to_string(budget) + "}"), forward_of(model), data.ids, {true, "adam", true}, hw, disk);
  RecordProperty("unforced_plan", techniques_of(unforced));
  // Offload is the only technique allowed: checkpointing and tiling off.
  const Plan plan = plan_blocks(*model, model->runner, offload_config(std::to_string(budget), R"({"checkpoint": "off", "tiling": "off"})"),
                                forward_of(model), data.ids, {true, "adam", true}, hw, disk);
  std::size_t offloaded = 0;
  for (std::size_t i = 0; i < model->runner.size(); ++i) offloaded += model->runner.planned(i).has("offload_activations");
  EXPECT_GT(offloaded, 0u) << techniques_of(plan);
  const std::uint64_t planned = tiny_gpt::measured_peak(*model, step);
  EXPECT_LE(static_cast<double>(planned), 1.05 * static_cast<double>(budget))
      << "unoptimized " << unoptimized << ", budget " << budget << ", measured " << planned << ", predicted "
      << plan.predicted_peak_bytes << "; " << techniques_of(plan);
  RecordProperty("unoptimized_peak_bytes", std::to_string(unoptimized));
  RecordProperty("budget_bytes", std::to_string(budget));
  RecordProperty("predicted_peak_bytes", std::to_string(plan.predicted_peak_bytes));
  RecordProperty("planned_peak_bytes", std::to_string(planned));
  RecordProperty("offload_plan", techniques_of(plan));
  model->runner.unwrap();
}

struct ForeignEngine final : torch::autograd::Engine {};
torch::autograd::Engine& foreign_engine() {
  static ForeignEngine* engine = new ForeignEngine();
  return *engine;
}

// Puts the base engine back however the test ends.
struct ForeignEngineInstalled {
  ForeignEngineInstalled() { torch::autograd::set_default_engine_stub(&foreign_engine); }
  ~ForeignEngineInstalled() { torch::autograd::set_default_engine_stub(&torch::autograd::Engine::get_base_engine); }
};

TEST(BlocksOffload, RefusedUnderAForeignEngineOrABadDirectory) {
  torch::manual_seed(2);
  TempDir dir;
  tiny_gpt::Gpt model(tiny_gpt::Options{128, 64, 64, 4, 2});
  const test_util::Batch data = batch(2, 16, 128);
  const Hardware hw = host_with_disk(dir.path.string());
  const Plan offloading = plan_blocks(*model, model->runner, offload_config("\"1GiB\"", kOffloadOnly), forward_of(model),
                                      data.ids, {true, "sgd"}, hw, DiskTierOptions{dir.path.string()});
  ASSERT_TRUE(model->runner.planned(0).has("offload_activations"));
  const Plan checkpointing = plan_blocks(*model, model->runner, offload_config("\"1GiB\"", R"({"checkpoint": "on", "tiling": "off"})"),
                                         forward_of(model), data.ids, {true, "sgd"}, hw);
  ASSERT_TRUE(model->runner.planned(0).has("checkpoint"));
  auto expect_refused = [&](const DiskTierOptions& disk, const std::string& words) {
    try {
      model->runner.apply(offloading, "blocks", disk);
      FAIL() << "applied offload_activations; expected: " << words;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
    // Nothing changed: the checkpoint plan still applies, no store.
    EXPECT_TRUE(model->runner.planned(0).has("checkpoint"));
    EXPECT_EQ(model->runner.activations(), nullptr);
  };
  expect_refused(DiskTierOptions{(dir.path / "missing").string()}, "does not exist");
  const fs::path read_only = dir.path / "read-only";
  fs::create_directory(read_only);
  fs::permissions(read_only, fs::perms::owner_read | fs::perms::owner_exec);
  expect_refused(DiskTierOptions{read_only.string()}, "not writable");
  {
    ForeignEngineInstalled foreign;
    ASSERT_TRUE(saved_tensor_engine_unavailable().has_value());
    expect_refused(DiskTierOptions{dir.path.string()}, "autograd engine");
    // The engine is told: even forced, no block offloads.
    const Plan planned = plan_blocks(*model, model->runner, offload_config("\"1GiB\"", R"({"offload_activations": "auto"})"),
                                     forward_of(model), data.ids, {true, "sgd"}, hw);
    for (const auto& layer : planned.layers) EXPECT_FALSE(layer.has("offload_activations")) << layer.name;
    EXPECT_EQ(&torch::autograd::Engine::get_default_engine(), &foreign_engine());
  }
  EXPECT_FALSE(saved_tensor_engine_unavailable().has_value());
}

}  // namespace
}  // namespace memscale
