// Test helper: the parameter gradients of one step (forward, sum of squares, backward).
#pragma once

#include <functional>
#include <vector>

#include <ATen/Tensor.h>
#include <torch/nn/modules/container/sequential.h>

namespace memscale::test_util {

/// Runs `forward(x).pow(2).sum().backward()` and returns (and clears) every parameter's gradient.
inline std::vector<at::Tensor> step_grads(const std::function<at::Tensor(const at::Tensor&)>& forward,
                                          torch::nn::Sequential& model, const at::Tensor& x) {
  forward(x).pow(2).sum().backward();
  std::vector<at::Tensor> grads;
  for (auto& p : model->parameters()) {
    grads.push_back(p.grad().clone());
    p.mutable_grad().reset();
  }
  return grads;
}

}  // namespace memscale::test_util
