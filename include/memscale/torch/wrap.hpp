// memscale::wrap for libtorch applications: profile -> plan -> apply, for models built
// as a torch::nn::Sequential. Checkpointing and batch-axis tiling are applied per child;
// offloading is available from Python only (C++ wrap plans with it switched off).
#pragma once

#include <optional>

#include <ATen/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>

#include "memscale/core/config.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/torch/profile.hpp"

namespace memscale {

/// Runs the children of a Sequential as the plan says. It registers the same child
/// modules under the same names, so parameters are shared with the Sequential and
/// `named_parameters()` / serialization keys are unchanged.
class WrappedSequentialImpl : public torch::nn::Module {
 public:
  WrappedSequentialImpl(torch::nn::Sequential inner, Plan plan);

  at::Tensor forward(const at::Tensor& input);

  const Plan& plan() const { return plan_; }
  /// The original Sequential: calling it directly is the unwrapped model.
  torch::nn::Sequential inner() const { return inner_; }

 private:
  torch::nn::Sequential inner_;
  Plan plan_;
};
TORCH_MODULE(WrappedSequential);

/// Profiles `model` on `example_input`, plans against `hardware` (detected when absent)
/// and `config`, logs the plan summary, and returns the wrapped model. Throws
/// ConfigError when the config asks for a technique the C++ executor cannot apply, and
/// InfeasibleBudgetError when nothing fits; `model` itself is never modified.
WrappedSequential wrap(torch::nn::Sequential model, const Config& config, const at::Tensor& example_input,
                       const ProfileOptions& options = {}, std::optional<Hardware> hardware = std::nullopt);

}  // namespace memscale
