// Which libtorch modules compute each row independently, so a batch can be split into
// chunks and the results concatenated without changing them. The kinds are core's
// position_wise_leaf_kinds() (memscale/core/position_wise_kinds.hpp), mapped to libtorch
// module names by libtorch_module_name() ("Linear" -> "torch::nn::LinearImpl").
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>

#include "memscale/core/position_wise_kinds.hpp"

namespace memscale {

namespace position_wise_detail {

inline const std::set<std::string>& libtorch_names() {
  static const std::set<std::string> names = [] {
    std::set<std::string> out;
    for (const auto& kind : position_wise_leaf_kinds()) out.insert(libtorch_module_name(kind));
    return out;
  }();
  return names;
}

/// The `dim` option of a feature_axis_kinds() module.
inline std::int64_t axis_of(const torch::nn::Module& module) {
  if (const auto* m = module.as<torch::nn::GLUImpl>()) return m->options.dim();
  if (const auto* m = module.as<torch::nn::SoftmaxImpl>()) return m->options.dim();
  if (const auto* m = module.as<torch::nn::LogSoftmaxImpl>()) return m->options.dim();
  return 0;  // a feature-axis kind whose option is not read here: not position-wise
}

/// A random_mask_kinds() module draws a mask now (training mode and p > 0).
inline bool draws_mask(const torch::nn::Module& module) {
  if (const auto* m = module.as<torch::nn::DropoutImpl>()) return module.is_training() && m->options.p() > 0.0;
  return true;  // a random-mask kind whose options are not read here: assume it draws
}

}  // namespace position_wise_detail

/// True for a module of a position_wise_leaf_kinds() kind (a feature-axis kind only with
/// dim = -1), and for a Sequential made only of those. A Dropout counts, active or not:
/// it masks each element on its own.
inline bool is_position_wise(const torch::nn::Module& module) {
  if (module.name() == "torch::nn::SequentialImpl") {
    const auto children = module.children();
    if (children.empty()) return false;
    for (const auto& child : children)
      if (!is_position_wise(*child)) return false;
    return true;
  }
  if (position_wise_detail::libtorch_names().count(module.name()) == 0) return false;
  const std::string kind = kind_of_libtorch_module_name(module.name());
  return !is_feature_axis_kind(kind) || position_wise_detail::axis_of(module) == -1;
}

/// True when chunking the module over the batch axis gives exactly the unchunked
/// outputs and gradients: position-wise, and no random-mask module (Dropout) in it draws
/// a mask (eval mode or p = 0). The profiler marks only these layers tileable.
inline bool chunking_is_exact(const torch::nn::Module& module) {
  if (!is_position_wise(module)) return false;
  if (module.name() == "torch::nn::SequentialImpl") {
    for (const auto& child : module.children())
      if (!chunking_is_exact(*child)) return false;
    return true;
  }
  return !is_random_mask_kind(kind_of_libtorch_module_name(module.name())) || !position_wise_detail::draws_mask(module);
}

}  // namespace memscale
