// The libtorch position-wise check reads core's position_wise_leaf_kinds() through the
// "torch::nn::<Kind>Impl" naming rule; Dropout counts as position-wise but a layer is
// tileable only while no Dropout in it draws a mask.
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <algorithm>

#include "memscale/core/position_wise_kinds.hpp"
#include "memscale/torch/position_wise.hpp"
#include "memscale/torch/profile.hpp"
#include "memscale/torch/wrap.hpp"
#include "step_grads.hpp"

namespace memscale {
namespace {

bool in_core_list(const std::string& kind) {
  const auto& kinds = position_wise_leaf_kinds();
  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

TEST(PositionWise, EveryLibtorchModuleOfACoreKindIsRecognisedByItsName) {
  const std::vector<std::shared_ptr<torch::nn::Module>> modules = {
      torch::nn::Linear(4, 4).ptr(),    torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})).ptr(),
      torch::nn::Identity().ptr(),      torch::nn::ReLU().ptr(),
      torch::nn::ReLU6().ptr(),         torch::nn::GELU().ptr(),
      torch::nn::SiLU().ptr(),          torch::nn::Tanh().ptr(),
      torch::nn::Sigmoid().ptr(),       torch::nn::Mish().ptr(),
      torch::nn::LeakyReLU().ptr(),     torch::nn::ELU().ptr(),
      torch::nn::CELU().ptr(),          torch::nn::SELU().ptr(),
      torch::nn::Softplus().ptr(),      torch::nn::GLU().ptr(),
      torch::nn::Softmax(-1).ptr(),     torch::nn::LogSoftmax(-1).ptr(),
      torch::nn::Dropout(0.1).ptr()};
  for (const auto& m : modules) {
    const std::string kind = kind_of_libtorch_module_name(m->name());
    EXPECT_TRUE(in_core_list(kind)) << m->name();
    EXPECT_EQ(libtorch_module_name(kind), m->name());
    EXPECT_TRUE(is_position_wise(*m)) << m->name();
  }
}

TEST(PositionWise, OtherModulesAndNamesAreNot) {
  EXPECT_FALSE(is_position_wise(*torch::nn::Dropout2d(0.1)));
  EXPECT_FALSE(is_position_wise(*torch::nn::Sequential()));
  EXPECT_FALSE(is_position_wise(*torch::nn::Sequential(torch::nn::Linear(4, 4), torch::nn::Dropout2d(0.1))));
  EXPECT_EQ(kind_of_libtorch_module_name("torch::nn::LinearImpl"), "Linear");
  EXPECT_EQ(kind_of_libtorch_module_name("torch::nn::functional::LinearImpl"), "");
  EXPECT_EQ(kind_of_libtorch_module_name("MyLinear"), "");
  EXPECT_EQ(kind_of_libtorch_module_name("torch::nn::Impl"), "");
}

TEST(PositionWise, AxisKindsOnlyOverTheFeatureAxis) {
  EXPECT_FALSE(is_position_wise(*torch::nn::GLU(0)));
  EXPECT_FALSE(is_position_wise(*torch::nn::Softmax(0)));
  EXPECT_FALSE(is_position_wise(*torch::nn::LogSoftmax(1)));
  EXPECT_TRUE(is_position_wise(*torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::GLU(-1))));
}

TEST(PositionWise, ChunkingIsExactOnlyWhileNoDropoutDrawsAMask) {
  torch::nn::Sequential mlp(torch::nn::Linear(4, 8), torch::nn::GELU(), torch::nn::Dropout(0.5), torch::nn::Linear(8, 4));
  EXPECT_TRUE(is_position_wise(*mlp));
  EXPECT_FALSE(chunking_is_exact(*mlp));  // training mode, p > 0
  mlp->eval();
  EXPECT_TRUE(chunking_is_exact(*mlp));
  EXPECT_TRUE(chunking_is_exact(*torch::nn::Dropout(0.0)));
  EXPECT_TRUE(chunking_is_exact(*torch::nn::Linear(4, 4)));
}

TEST(PositionWise, ProfileMarksOnlyAnInactiveDropoutTileableAndTilingKeepsGradients) {
  torch::manual_seed(5);
  // libtorch cannot nest a Sequential in a Sequential: each child is one planning unit.
  torch::nn::Sequential model(torch::nn::Linear(32, 128), torch::nn::GELU(), torch::nn::Dropout(0.0),
                              torch::nn::Linear(128, 32), torch::nn::Dropout(0.3), torch::nn::Linear(32, 4));
  const at::Tensor x = torch::randn({16, 32});
  const ModelGraph g = profile_sequential(model, x, {true, "sgd"});
  ASSERT_EQ(g.layers.size(), 6u);
  EXPECT_EQ(g.layers[2].kind, "mlp");
  EXPECT_EQ(g.layers[2].tileable, std::vector<std::string>{"batch"});  // Dropout(0): draws no mask
  EXPECT_EQ(g.layers[4].kind, "mlp");
  EXPECT_TRUE(g.layers[4].tileable.empty());  // Dropout(0.3) in training: chunks would draw other masks

  Hardware hw;
  hw.host_total_bytes = hw.host_available_bytes = 8ull << 30;
  auto wrapped = wrap(model, Config::from_json_text(R"({"memory_budget": "1GiB", "force_optimize": true,
                                                         "techniques": {"tiling": "on"}})"),
                      x, {true, "sgd"}, hw);
  bool any_tile = false;
  for (const auto& layer : wrapped->plan().layers) any_tile = any_tile || layer.has("tile");
  EXPECT_TRUE(any_tile);
  EXPECT_FALSE(wrapped->plan().layers[4].has("tile"));
  // The same RNG state for both runs: the active Dropout (not tiled) draws the same mask.
  torch::manual_seed(9);
  const auto plain = test_util::step_grads([&](const at::Tensor& t) { return model->forward(t); }, model, x);
  torch::manual_seed(9);
  const auto ours = test_util::step_grads([&](const at::Tensor& t) { return wrapped->forward(t); }, model, x);
  ASSERT_EQ(plain.size(), ours.size());
  for (std::size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::allclose(plain[i], ours[i], 1e-5, 1e-7)) << i;
}

}  // namespace
}  // namespace memscale
