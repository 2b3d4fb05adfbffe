// Profiling libtorch models into the same ModelGraph the Python profiler produces.
#pragma once

#include <string>

#include <ATen/Tensor.h>
#include <torch/nn/modules/container/sequential.h>

#include "memscale/core/model_graph.hpp"

namespace memscale {

struct ProfileOptions {
  bool training = true;
  std::string optimizer = "adamw";  ///< none|sgd|sgd_momentum|adam|adamw
};

/// Profiles a Sequential by running each child once on the example input under the
/// counting allocator (a measured profile: it allocates real memory, so give a batch
/// that fits). Per child: parameter/buffer/grad/optimizer bytes from its tensors;
/// activation bytes = bytes the child's forward leaves allocated (its saved tensors, and
/// its output when the next child saves it); transient = its forward peak above that.
/// Children made only of position-wise modules (core's position_wise_leaf_kinds():
/// Linear, LayerNorm, activations, Dropout) are marked tileable over the batch axis
/// (dim 0) when chunking them is exact: no Dropout in them drawing a mask
/// (chunking_is_exact in memscale/torch/position_wise.hpp).
ModelGraph profile_sequential(torch::nn::Sequential& model, const at::Tensor& example_input,
                              const ProfileOptions& options = {});

}  // namespace memscale
