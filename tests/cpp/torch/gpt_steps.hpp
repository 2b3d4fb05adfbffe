// Test helper: batches, steps and gradient comparison for the tiny GPT of
// examples/cpp/tiny_gpt.hpp (the Blocks tests).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/adam.h>

#include "../../../examples/cpp/tiny_gpt.hpp"

namespace memscale::test_util {

struct Batch {
  at::Tensor ids, targets;
};

inline Batch batch(std::int64_t b, std::int64_t t, std::int64_t vocab) {
  return {at::randint(vocab, {b, t}, at::kLong), at::randint(vocab, {b, t}, at::kLong)};
}

inline std::function<at::Tensor(const at::Tensor&)> forward_of(tiny_gpt::Gpt& model) {
  return [model](const at::Tensor& ids) mutable { return model->forward(ids); };
}

/// Every parameter gradient of one step (loss, backward), taken out of the model.
inline std::vector<at::Tensor> step_grads(tiny_gpt::Gpt& model, const Batch& data) {
  tiny_gpt::loss_of(model, data.ids, data.targets).backward();
  return tiny_gpt::take_grads(*model);
}

/// One training step with a fresh Adam (its state is allocated inside the step).
inline void adam_step(tiny_gpt::Gpt& model, const Batch& data) {
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  tiny_gpt::loss_of(model, data.ids, data.targets).backward();
  optimizer.step();
  optimizer.zero_grad();
}

/// The parameters' values now, to put back after a step (equal weights for two runs).
struct SavedWeights {
  torch::nn::Module& model;
  std::vector<at::Tensor> values;
  explicit SavedWeights(torch::nn::Module& m) : model(m) {
    for (const auto& p : m.parameters()) values.push_back(p.detach().clone());
  }
  void restore() {
    torch::NoGradGuard no_grad;
    auto params = model.parameters();
    for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(values[i]);
  }
};

inline void expect_equal_grads(const std::vector<at::Tensor>& plain, const std::vector<at::Tensor>& ours) {
  ASSERT_EQ(plain.size(), ours.size());
  for (std::size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::allclose(plain[i], ours[i], 1e-5, 1e-6)) << "parameter " << i;
}

}  // namespace memscale::test_util
