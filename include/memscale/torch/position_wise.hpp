// Which libtorch modules compute each row independently, so a batch can be split into
// chunks and the results concatenated without changing them.
#pragma once

#include <set>
#include <string>

#include <torch/nn/module.h>

namespace memscale {

/// True for Linear, LayerNorm, Identity and elementwise activations, and for a
/// Sequential made only of those. Dropout is excluded: chunking would change which
/// elements its random mask drops.
inline bool is_position_wise(const torch::nn::Module& module) {
  static const std::set<std::string> row_wise = {
      "torch::nn::LinearImpl", "torch::nn::LayerNormImpl", "torch::nn::IdentityImpl", "torch::nn::ReLUImpl",
      "torch::nn::GELUImpl",   "torch::nn::SiLUImpl",      "torch::nn::TanhImpl",     "torch::nn::SigmoidImpl",
      "torch::nn::MishImpl",   "torch::nn::LeakyReLUImpl", "torch::nn::ELUImpl",      "torch::nn::SoftplusImpl"};
  if (module.name() == "torch::nn::SequentialImpl") {
    const auto children = module.children();
    if (children.empty()) return false;
    for (const auto& child : children)
      if (!is_position_wise(*child)) return false;
    return true;
  }
  return row_wise.count(module.name()) > 0;
}

}  // namespace memscale
