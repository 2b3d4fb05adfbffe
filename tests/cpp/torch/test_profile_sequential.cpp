#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "memscale/torch/counting_allocator.hpp"
#include "memscale/torch/detect_hardware.hpp"
#include "memscale/torch/profile.hpp"

namespace memscale {
namespace {

torch::nn::Sequential make_mlp() {
  return torch::nn::Sequential(torch::nn::Linear(32, 64), torch::nn::GELU(), torch::nn::Dropout(0.1),
                               torch::nn::LayerNorm(torch::nn::LayerNormOptions({64})), torch::nn::Linear(64, 8));
}

TEST(ProfileSequential, ParameterBytesKindsAndTileableAxes) {
  auto model = make_mlp();
  const at::Tensor input = torch::randn({16, 32});
  const ModelGraph g = profile_sequential(model, input, {true, "adamw"});
  ASSERT_EQ(g.layers.size(), 5u);
  EXPECT_EQ(g.layers[0].param_bytes, (32 * 64 + 64) * 4u);
  EXPECT_EQ(g.layers[0].grad_bytes, g.layers[0].param_bytes);
  EXPECT_EQ(g.layers[0].optimizer_bytes, 2 * g.layers[0].param_bytes);
  EXPECT_EQ(g.layers[3].param_bytes, 2 * 64 * 4u);
  EXPECT_EQ(g.layers[4].param_bytes, (64 * 8 + 8) * 4u);
  EXPECT_EQ(g.layers[0].kind, "mlp");
  EXPECT_EQ(g.layers[3].kind, "norm");
  // Dropout is position-wise, but chunking an active one would draw different masks.
  EXPECT_EQ(g.layers[2].kind, "mlp");
  EXPECT_EQ(g.layers[0].tileable, std::vector<std::string>{"batch"});
  EXPECT_TRUE(g.layers[2].tileable.empty());
  EXPECT_EQ(g.layers[1].input_bytes, 16 * 64 * 4u);
  EXPECT_EQ(g.batch, 16);
  EXPECT_EQ(g.input_bytes, 16 * 32 * 4u);
  // The model is a valid ModelGraph document.
  EXPECT_EQ(ModelGraph::from_json_text(g.to_json_text()), g);
}

TEST(ProfileSequential, ActivationBytesAddUpToWhatTheForwardRetains) {
  auto model = make_mlp();
  const at::Tensor input = torch::randn({16, 32});
  const ModelGraph g = profile_sequential(model, input);
  std::uint64_t sum = 0;
  for (const auto& l : g.layers) sum += l.activation_bytes;
  memory::CountingSession session;
  at::Tensor out = model->forward(input);
  EXPECT_EQ(static_cast<std::int64_t>(sum), session.stats().current_bytes);
  EXPECT_GT(sum, 0u);
}

TEST(ProfileSequential, InferenceKeepsNoActivations) {
  auto model = make_mlp();
  const ModelGraph g = profile_sequential(model, torch::randn({4, 32}), {false, "adamw"});
  EXPECT_EQ(g.optimizer, "none");
  for (const auto& l : g.layers) {
    EXPECT_EQ(l.activation_bytes, 0u);
    EXPECT_EQ(l.grad_bytes, 0u);
  }
}

TEST(DetectHardware, HostMemoryAndOffloadDirectory) {
  const Hardware hw = detect_hardware();
  EXPECT_GT(hw.host_total_bytes, 0u);
  EXPECT_LE(hw.host_available_bytes, hw.host_total_bytes);
  EXPECT_FALSE(hw.offload_dir.empty());
  EXPECT_GT(hw.offload_dir_free_bytes, 0u);
}

TEST(DetectHardware, AnOffloadDirectoryNotYetCreatedReportsItsFilesystemsFreeSpace) {
  const Hardware hw = detect_hardware(detect_hardware().offload_dir + "/memscale-not-created/sub");
  EXPECT_NE(hw.offload_dir.find("memscale-not-created"), std::string::npos);
  EXPECT_GT(hw.offload_dir_free_bytes, 0u);
}

}  // namespace
}  // namespace memscale
