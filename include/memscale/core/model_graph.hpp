// ModelGraph: what the profiler measured or estimated about a model, layer by layer in
// execution order. The engine plans on this alone (docs/json-schema.md has every field).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/distributed.hpp"
#include "memscale/core/json_fields.hpp"

namespace memscale {

/// Model dimensions read from the layer; 0 means unknown.
struct Dims {
  std::int64_t hidden = 0, intermediate = 0, heads = 0, vocab = 0, seq = 0, batch = 0;
  bool operator==(const Dims&) const = default;
};

/// One planning unit (a block, an embedding, the head, ...).
struct Layer {
  std::int64_t index = 0;
  std::string name;            ///< module path as in named_modules(); "" for the root
  std::string kind = "other";  ///< embedding|attention|mlp|block|norm|lm_head|conv|recurrent|other
  std::uint64_t param_bytes = 0, buffer_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  std::uint64_t activation_bytes = 0;  ///< saved for backward, deduplicated by storage (retained ones excluded)
  /// Training: bytes its forward allocates that stay referenced outside autograd until
  /// backward ends (a KV cache object the model's calls carry, the output a loss outside
  /// the model is computed from); no technique frees them.
  std::uint64_t retained_bytes = 0;
  /// Training: a gradient reaches its output in backward (false for a layer before every
  /// trainable parameter, a frozen embedding under LoRA: it has no incoming gradient).
  bool receives_grad = true;
  std::uint64_t transient_bytes = 0;   ///< scratch peak inside the layer (forward or backward)
  std::uint64_t input_bytes = 0, output_bytes = 0;
  std::uint64_t kv_cache_bytes = 0;  ///< KV cache for batch x seq tokens (inference)
  std::uint64_t flops = 0;           ///< forward FLOPs, 0 = unknown
  Dims dims;
  std::vector<std::string> tileable;  ///< axes it may be chunked over: "seq", "batch"
  std::uint64_t measured_peak_bytes = 0, measured_activation_bytes = 0;  ///< 0 = not measured
  /// Techniques the runtime cannot apply to this layer in this model and call convention,
  /// by plan name (checkpoint|offload_activations|offload_weights|tile) -> why; the engine
  /// never plans them. Empty (or absent in JSON) = every technique is capable.
  std::map<std::string, std::string> cannot;
  /// FSDP2: unsharded bytes around its compute on one rank (distributed.hpp); all 0 otherwise.
  LayerSharding sharding;
  bool operator==(const Layer&) const = default;
};

/// The whole model as profiled for one step.
struct ModelGraph {
  std::string model_name;
  std::string dtype = "float32";
  std::int64_t batch = 0, seq = 0;
  /// Longest sequence the model accepts (its config's max positions); 0 = unknown.
  std::int64_t max_positions = 0;
  bool training = true;
  std::string optimizer = "adamw";  ///< none|sgd|sgd_momentum|adam|adamw
  /// How the optimizer steps (its temporaries differ): default (torch's choice for the
  /// device: per-tensor on CPU, foreach on CUDA), foreach, per_tensor or fused.
  std::string optimizer_impl = "default";
  bool mixed_precision = false;
  std::uint64_t input_bytes = 0;
  /// Largest single trainable parameter tensor (0 = unknown): sizes the per-tensor
  /// optimizer's workspace on CPU.
  std::uint64_t largest_param_bytes = 0;
  /// Bytes of each trainable parameter tensor in the order the optimizer steps them (empty =
  /// unknown): the per-tensor optimizer's workspace is exact with it (memory_model.hpp).
  std::vector<std::uint64_t> trainable_param_bytes;
  /// The runtime can stream this optimizer's state and gradients to the next tier window by
  /// window (the user handed wrap the optimizer object): the engine may then plan it
  /// (rules/optimizer_offload.hpp). False keeps the state and gradients on the device.
  bool optimizer_offloadable = false;
  /// The torch.distributed engine the model runs under (none: one process); layer figures
  /// are then one rank's (distributed.hpp).
  Distributed distributed;
  std::vector<Layer> layers;
  bool operator==(const ModelGraph&) const = default;

  static ModelGraph from_json_text(const std::string& text);
  std::string to_json_text() const;
};

inline const std::vector<std::string>& layer_kinds() {
  static const std::vector<std::string> kinds = {"embedding", "attention", "mlp",       "block", "norm",
                                                 "lm_head",   "conv",      "recurrent", "other"};
  return kinds;
}

/// The values graph.optimizer_impl takes.
inline const std::vector<std::string>& optimizer_impls() {
  static const std::vector<std::string> impls = {"default", "foreach", "per_tensor", "fused"};
  return impls;
}

inline const std::vector<std::string>& optimizer_kinds() {
  static const std::vector<std::string> kinds = {"none", "sgd", "sgd_momentum", "adam", "adamw"};
  return kinds;
}

/// Optimizer state bytes per trainable parameter byte (docs/json-schema.md): none and
/// sgd keep no state, sgd_momentum one buffer (1x), adam/adamw two moments (2x). Both
/// profilers (C++ and Python, through the binding) size `optimizer_bytes` with it.
/// An optimizer not in optimizer_kinds() is a ConfigError naming it and the allowed ones.
inline std::uint64_t optimizer_state_factor(const std::string& optimizer) {
  json_fields::one_of(optimizer, optimizer_kinds(), "optimizer");
  if (optimizer == "adam" || optimizer == "adamw") return 2;
  if (optimizer == "sgd_momentum") return 1;
  return 0;
}

/// Mixed precision keeps an fp32 master copy of every trainable parameter beside its
/// low-precision value: 4 bytes per parameter element, counted in `optimizer_bytes`.
inline constexpr std::uint64_t master_weight_bytes_per_element = 4;

/// A layer's `optimizer_bytes`: optimizer state of its trainable parameters
/// (`trainable_bytes` of them, `trainable_elements` elements), plus the fp32 master
/// weights when training with mixed precision.
inline std::uint64_t optimizer_state_bytes(const std::string& optimizer, std::uint64_t trainable_bytes,
                                           std::uint64_t trainable_elements, bool mixed_precision) {
  return optimizer_state_factor(optimizer) * trainable_bytes +
         (mixed_precision ? master_weight_bytes_per_element * trainable_elements : 0);
}

inline void to_json(nlohmann::json& j, const Dims& d) {
  j = {{"hidden", d.hidden}, {"intermediate", d.intermediate}, {"heads", d.heads},
       {"vocab", d.vocab},   {"seq", d.seq},                   {"batch", d.batch}};
}

inline Dims dims_from_json(const nlohmann::json& j, const std::string& path) {
  namespace f = json_fields;
  auto read = [&](const char* key) { return f::optional<std::int64_t>(j, key, path, 0, f::as_i64); };
  if (!j.is_object()) f::wrong_type(path, j, "an object of dims");
  return Dims{read("hidden"), read("intermediate"), read("heads"), read("vocab"), read("seq"), read("batch")};
}

inline void to_json(nlohmann::json& j, const Layer& l) {
  j = {{"index", l.index},
       {"name", l.name},
       {"kind", l.kind},
       {"param_bytes", l.param_bytes},
       {"buffer_bytes", l.buffer_bytes},
       {"grad_bytes", l.grad_bytes},
       {"optimizer_bytes", l.optimizer_bytes},
       {"activation_bytes", l.activation_bytes},
       {"retained_bytes", l.retained_bytes},
       {"receives_grad", l.receives_grad},
       {"transient_bytes", l.transient_bytes},
       {"input_bytes", l.input_bytes},
       {"output_bytes", l.output_bytes},
       {"kv_cache_bytes", l.kv_cache_bytes},
       {"flops", l.flops},
       {"dims", l.dims},
       {"tileable", l.tileable},
       {"measured_peak_bytes", l.measured_peak_bytes},
       {"measured_activation_bytes", l.measured_activation_bytes}};
  if (!l.cannot.empty()) j["cannot"] = l.cannot;
  if (l.sharding.any()) j["sharding"] = l.sharding;
}

inline const std::vector<std::string>& technique_names() {
  static const std::vector<std::string> names = {"checkpoint", "offload_activations", "offload_weights", "tile"};
  return names;
}

inline Layer layer_from_json(const nlohmann::json& j, const std::string& path) {
  namespace f = json_fields;
  Layer l;
  l.index = f::i64(j, "index", path);
  l.name = f::string(j, "name", path);
  l.kind = f::one_of(f::string(j, "kind", path), layer_kinds(), path + ".kind");
  l.param_bytes = f::u64(j, "param_bytes", path);
  l.buffer_bytes = f::optional<std::uint64_t>(j, "buffer_bytes", path, 0, f::as_u64);
  l.grad_bytes = f::optional<std::uint64_t>(j, "grad_bytes", path, 0, f::as_u64);
  l.optimizer_bytes = f::optional<std::uint64_t>(j, "optimizer_bytes", path, 0, f::as_u64);
  l.activation_bytes = f::u64(j, "activation_bytes", path);
  l.retained_bytes = f::optional<std::uint64_t>(j, "retained_bytes", path, 0, f::as_u64);
  l.receives_grad = f::optional<bool>(j, "receives_grad", path, true, f::as_bool);
  l.transient_bytes = f::optional<std::uint64_t>(j, "transient_bytes", path, 0, f::as_u64);
  l.input_bytes = f::optional<std::uint64_t>(j, "input_bytes", path, 0, f::as_u64);
  l.output_bytes = f::optional<std::uint64_t>(j, "output_bytes", path, 0, f::as_u64);
  l.kv_cache_bytes = f::optional<std::uint64_t>(j, "kv_cache_bytes", path, 0, f::as_u64);
  l.flops = f::optional<std::uint64_t>(j, "flops", path, 0, f::as_u64);
  if (j.contains("dims")) l.dims = dims_from_json(j.at("dims"), path + ".dims");
  l.tileable = f::optional<std::vector<std::string>>(j, "tileable", path, {}, f::as_strings);
  for (const auto& axis : l.tileable) f::one_of(axis, {"seq", "batch"}, path + ".tileable");
  l.measured_peak_bytes = f::optional<std::uint64_t>(j, "measured_peak_bytes", path, 0, f::as_u64);
  l.measured_activation_bytes = f::optional<std::uint64_t>(j, "measured_activation_bytes", path, 0, f::as_u64);
  if (j.contains("cannot")) {
    const auto& cannot = j.at("cannot");
    if (!cannot.is_object()) f::wrong_type(path + ".cannot", cannot, "an object {technique: reason}");
    for (const auto& [technique, reason] : cannot.items()) {
      f::one_of(technique, technique_names(), path + ".cannot");
      if (!reason.is_string()) f::wrong_type(path + ".cannot." + technique, reason, "a string (the reason)");
      l.cannot[technique] = reason.get<std::string>();
    }
  }
  if (j.contains("sharding")) l.sharding = sharding_from_json(j.at("sharding"), path + ".sharding");
  return l;
}

inline void to_json(nlohmann::json& j, const ModelGraph& g) {
  j = {{"model_name", g.model_name}, {"dtype", g.dtype},         {"batch", g.batch},
       {"seq", g.seq},               {"max_positions", g.max_positions},
       {"training", g.training},     {"optimizer", g.optimizer},
       {"optimizer_impl", g.optimizer_impl}, {"mixed_precision", g.mixed_precision}, {"input_bytes", g.input_bytes},
       {"largest_param_bytes", g.largest_param_bytes}, {"trainable_param_bytes", g.trainable_param_bytes},
       {"layers", g.layers}};
  // Written only when set: graphs (and their golden files) without it stay byte-identical.
  if (g.optimizer_offloadable) j["optimizer_offloadable"] = true;
  if (g.distributed.active()) j["distributed"] = g.distributed;
}

inline ModelGraph graph_from_json(const nlohmann::json& j) {
  namespace f = json_fields;
  const std::string path = "graph";
  ModelGraph g;
  g.model_name = f::optional<std::string>(j, "model_name", path, "", f::as_string);
  g.dtype = f::one_of(f::optional<std::string>(j, "dtype", path, "float32", f::as_string),
                      {"float32", "float16", "bfloat16", "float64", "int8"}, "graph.dtype");
  g.batch = f::optional<std::int64_t>(j, "batch", path, 0, f::as_i64);
  g.seq = f::optional<std::int64_t>(j, "seq", path, 0, f::as_i64);
  g.max_positions = f::optional<std::int64_t>(j, "max_positions", path, 0, f::as_i64);
  g.training = f::optional<bool>(j, "training", path, true, f::as_bool);
  g.optimizer = f::one_of(f::optional<std::string>(j, "optimizer", path, "adamw", f::as_string), optimizer_kinds(),
                          "graph.optimizer");
  g.optimizer_impl = f::one_of(f::optional<std::string>(j, "optimizer_impl", path, "default", f::as_string),
                               optimizer_impls(), "graph.optimizer_impl");
  g.mixed_precision = f::optional<bool>(j, "mixed_precision", path, false, f::as_bool);
  g.input_bytes = f::optional<std::uint64_t>(j, "input_bytes", path, 0, f::as_u64);
  g.largest_param_bytes = f::optional<std::uint64_t>(j, "largest_param_bytes", path, 0, f::as_u64);
  if (j.contains("trainable_param_bytes")) {
    const auto& sizes = j.at("trainable_param_bytes");
    if (!sizes.is_array()) f::wrong_type("graph.trainable_param_bytes", sizes, "an array of byte counts");
    for (std::size_t i = 0; i < sizes.size(); ++i)
      g.trainable_param_bytes.push_back(f::as_u64(sizes[i], "graph.trainable_param_bytes[" + std::to_string(i) + "]"));
  }
  g.optimizer_offloadable = f::optional<bool>(j, "optimizer_offloadable", path, false, f::as_bool);
  if (j.contains("distributed")) g.distributed = distributed_from_json(j.at("distributed"), "graph.distributed");
  const auto& layers = f::require(j, "layers", path);
  if (!layers.is_array()) f::wrong_type("graph.layers", layers, "an array of layers");
  for (std::size_t i = 0; i < layers.size(); ++i) {
    Layer l = layer_from_json(layers[i], "graph.layers[" + std::to_string(i) + "]");
    if (l.index != static_cast<std::int64_t>(i))
      throw ConfigError("graph.layers[" + std::to_string(i) + "].index: got " + std::to_string(l.index) +
                        ", expected " + std::to_string(i) + " (layers are listed in execution order)");
    g.layers.push_back(std::move(l));
  }
  return g;
}

inline ModelGraph ModelGraph::from_json_text(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(std::string("graph: not valid JSON: ") + e.what());
  }
  return graph_from_json(j);
}

inline std::string ModelGraph::to_json_text() const { return nlohmann::json(*this).dump(2); }

}  // namespace memscale
