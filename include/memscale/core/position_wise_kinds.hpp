// Position-wise leaf kinds: the module kinds whose output at one position (a token, a
// row of the batch) depends only on the input at that position, so a layer built only
// of them may be chunked over the sequence or batch axis and its chunk outputs
// concatenated. This is the one list: the libtorch profiler and executor
// (memscale/torch/position_wise.hpp) and the Python profiler (through
// `_C.position_wise_leaf_kinds()`) both read it.
//
// A kind is the module's class name as both frameworks spell it: "Linear" is Python's
// `torch.nn.Linear` and libtorch's `torch::nn::LinearImpl`
// (see libtorch_module_name()). A kind one framework lacks (libtorch has no RMSNorm or
// Hardswish module) simply never matches there.
//
// Two kinds of condition qualify the list:
//
// * Kinds with an axis option (feature_axis_kinds(): GLU, Softmax, LogSoftmax) are
//   position-wise only when that axis is the feature axis (dim = -1).
// * Dropout (random_mask_kinds()) masks each element independently, so it is
//   position-wise and a layer holding it is an MLP; but chunking it is exact only while
//   it draws no mask (eval mode, or p = 0). While active, each chunk draws its own
//   mask, and the mask, not its distribution, differs from the one the untiled layer
//   draws from the same RNG state: outputs and gradients would no longer equal the
//   unwrapped model's, which wrap() promises. So a layer with an active Dropout is
//   position-wise but not tileable (its `tileable` axes stay empty); the same layer in
//   eval mode, or with p = 0, is tileable. (Checkpointing keeps the mask: it replays
//   one forward under the same RNG state.)
//
// Each framework reads the module's options (dim, p, training) for these conditions.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

namespace memscale {

/// Leaf module kinds that act on each position independently.
inline const std::vector<std::string>& position_wise_leaf_kinds() {
  static const std::vector<std::string> kinds = {
      // affine, per-position norms, identity
      "Linear", "LayerNorm", "RMSNorm", "Identity",
      // elementwise activations
      "ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "Mish", "LeakyReLU", "ELU", "CELU", "SELU", "Softplus",
      "Hardswish",
      // along an axis: feature_axis_kinds()
      "GLU", "Softmax", "LogSoftmax",
      // random mask: random_mask_kinds()
      "Dropout"};
  return kinds;
}

/// Kinds of position_wise_leaf_kinds() that take an axis (`dim`): position-wise only
/// when it is the feature axis, -1.
inline const std::vector<std::string>& feature_axis_kinds() {
  static const std::vector<std::string> kinds = {"GLU", "Softmax", "LogSoftmax"};
  return kinds;
}

/// Kinds of position_wise_leaf_kinds() that draw a random mask: chunking them is
/// exact only while inactive (eval mode or p = 0).
inline const std::vector<std::string>& random_mask_kinds() {
  static const std::vector<std::string> kinds = {"Dropout"};
  return kinds;
}

inline bool is_position_wise_leaf_kind(const std::string& kind) {
  const auto& kinds = position_wise_leaf_kinds();
  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

inline bool is_feature_axis_kind(const std::string& kind) {
  const auto& kinds = feature_axis_kinds();
  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

/// The libtorch module name (torch::nn::Module::name()) of a kind:
/// "Linear" -> "torch::nn::LinearImpl".
inline bool is_random_mask_kind(const std::string& kind) {
  const auto& kinds = random_mask_kinds();
  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

inline std::string libtorch_module_name(const std::string& kind) { return "torch::nn::" + kind + "Impl"; }

/// The kind of a libtorch module name, or "" when it is not of the form
/// "torch::nn::<Kind>Impl".
inline std::string kind_of_libtorch_module_name(const std::string& name) {
  static const std::string prefix = "torch::nn::", suffix = "Impl";
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return "";
  const std::string kind = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  return kind.find(':') == std::string::npos ? kind : "";
}

}  // namespace memscale
