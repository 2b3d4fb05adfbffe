// Activation checkpointing for libtorch code: run a layer without keeping its saved
// tensors, and recompute it (with the same RNG state, so dropout matches) when the
// backward pass reaches it.
#pragma once

#include <functional>

#include <ATen/Tensor.h>

namespace memscale {

/// A layer as a function of one tensor (a Sequential child, a lambda over a block).
using LayerFn = std::function<at::Tensor(const at::Tensor&)>;

/// Returns `fn(input)` computed without storing activations for backward; in backward,
/// `fn` is re-run on a saved reference to `input` under the RNG state of the forward
/// call, and its gradients flow to `input` and accumulate into the parameters `fn` uses.
/// With grad mode off it is just `fn(input)`.
at::Tensor checkpoint(const LayerFn& fn, const at::Tensor& input);

}  // namespace memscale
