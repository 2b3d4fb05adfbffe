#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "memscale/core/errors.hpp"
#include "memscale/torch/wrap.hpp"
#include "step_grads.hpp"

namespace memscale {
namespace {

torch::nn::Sequential make_model() {
  return torch::nn::Sequential(torch::nn::Linear(32, 128), torch::nn::GELU(), torch::nn::Linear(128, 32),
                               torch::nn::ReLU(), torch::nn::Linear(32, 4));
}

Hardware host(std::uint64_t bytes) {
  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = bytes;
  return hw;
}

void expect_same_grads(const Config& config, bool expect_tiles) {
  torch::manual_seed(3);
  auto model = make_model();
  const at::Tensor x = torch::randn({16, 32});
  auto wrapped = wrap(model, config, x, {true, "sgd"}, host(8ull << 30));
  bool any_tile = false;
  for (const auto& layer : wrapped->plan().layers) any_tile = any_tile || layer.has("tile");
  EXPECT_EQ(any_tile, expect_tiles);
  const auto plain = test_util::step_grads([&](const at::Tensor& t) { return model->forward(t); }, model, x);
  const auto ours = test_util::step_grads([&](const at::Tensor& t) { return wrapped->forward(t); }, model, x);
  ASSERT_EQ(plain.size(), ours.size());
  for (std::size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::allclose(plain[i], ours[i], 1e-5, 1e-7)) << i;
}

TEST(WrapSequential, CheckpointEverywhereKeepsGradients) {
  expect_same_grads(Config::from_json_text(R"({"memory_budget": "1GiB", "force_optimize": true,
                                               "techniques": {"checkpoint": "on", "tiling": "off"}})"),
                    false);
}

TEST(WrapSequential, TilingKeepsGradients) {
  expect_same_grads(Config::from_json_text(R"({"memory_budget": "1GiB", "force_optimize": true,
                                               "techniques": {"tiling": "on"}})"),
                    true);
}

TEST(WrapSequential, SharesParametersAndNames) {
  auto model = make_model();
  auto wrapped = wrap(model, Config::from_json_text(R"({"memory_budget": "1GiB"})"), torch::randn({4, 32}), {},
                      host(8ull << 30));
  const auto mine = wrapped->named_parameters();
  const auto theirs = model->named_parameters();
  ASSERT_EQ(mine.size(), theirs.size());
  for (std::size_t i = 0; i < mine.size(); ++i) {
    EXPECT_EQ(mine[i].key(), theirs[i].key());
    EXPECT_TRUE(mine[i].value().is_same(theirs[i].value()));
  }
}

TEST(WrapSequential, OffloadRequestsAreRefusedClearly) {
  auto model = make_model();
  try {
    wrap(model, Config::from_json_text(R"({"techniques": {"offload_weights": "on"}})"), torch::randn({4, 32}), {},
         host(8ull << 30));
    FAIL() << "accepted offload_weights=on";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("techniques.offload_weights"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace memscale
