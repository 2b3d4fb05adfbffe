#include <gtest/gtest.h>
#include <torch/csrc/autograd/function.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/activation.h>

#include "memscale/torch/checkpoint.hpp"

namespace memscale {
namespace {

torch::nn::Sequential make_block() {
  return torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::GELU(), torch::nn::Dropout(0.3),
                               torch::nn::Linear(32, 16));
}

std::vector<at::Tensor> grads_of(torch::nn::Sequential& block) {
  std::vector<at::Tensor> out;
  for (auto& p : block->parameters()) out.push_back(p.grad().clone());
  return out;
}

TEST(Checkpoint, LossAndGradientsMatchThePlainBlockWithDropout) {
  torch::manual_seed(0);
  auto block = make_block();
  block->train();
  const at::Tensor input = torch::randn({4, 16});

  torch::manual_seed(42);
  at::Tensor x1 = input.clone().requires_grad_(true);
  at::Tensor plain = block->forward(x1).pow(2).sum();
  plain.backward();
  auto plain_grads = grads_of(block);
  for (auto& p : block->parameters()) p.mutable_grad().reset();

  torch::manual_seed(42);
  at::Tensor x2 = input.clone().requires_grad_(true);
  at::Tensor checkpointed = checkpoint([&](const at::Tensor& t) { return block->forward(t); }, x2).pow(2).sum();
  EXPECT_EQ(checkpointed.grad_fn()->next_edges().size(), 1u);
  checkpointed.backward();
  auto ck_grads = grads_of(block);

  EXPECT_TRUE(torch::allclose(plain, checkpointed, 1e-5, 1e-6));
  ASSERT_EQ(plain_grads.size(), ck_grads.size());
  for (std::size_t i = 0; i < plain_grads.size(); ++i)
    EXPECT_TRUE(torch::allclose(plain_grads[i], ck_grads[i], 1e-5, 1e-6)) << "parameter " << i;
  EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-5, 1e-6));
}

TEST(Checkpoint, ParameterGradsFlowWhenTheInputNeedsNoGrad) {
  torch::manual_seed(1);
  auto block = make_block();
  block->eval();
  const at::Tensor input = torch::randn({3, 16});
  block->forward(input).sum().backward();
  auto plain_grads = grads_of(block);
  for (auto& p : block->parameters()) p.mutable_grad().reset();
  checkpoint([&](const at::Tensor& t) { return block->forward(t); }, input).sum().backward();
  auto ck_grads = grads_of(block);
  for (std::size_t i = 0; i < plain_grads.size(); ++i) EXPECT_TRUE(torch::allclose(plain_grads[i], ck_grads[i]));
}

TEST(Checkpoint, NoGradModeIsAPlainCall) {
  auto block = make_block();
  block->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor input = torch::randn({2, 16});
  at::Tensor out = checkpoint([&](const at::Tensor& t) { return block->forward(t); }, input);
  EXPECT_FALSE(out.requires_grad());
  EXPECT_TRUE(torch::allclose(out, block->forward(input)));
}

}  // namespace
}  // namespace memscale
