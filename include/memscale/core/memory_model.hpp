// Memory model of one training step and of one inference step on the planning device.
// docs/memory-model.md derives every formula and lists each technique's effect on each
// term; this header is the single implementation of those formulas (the engine's
// incremental bookkeeping in peak_tracker.hpp adds up the same per-layer terms).
//
// Training step, layers 0..n-1 in execution order:
//   base      = graph input + Σ_k static_k             (params + buffers + optimizer state)
//   windows   = weight window + activation window      (offloaded bytes on their way back)
//   forward  at l:  F_l = base + windows + Σ_{k<l} (saved_k + retained_k) + forward_local_l
//   backward at l:  B_l = base + windows + Σ_{k<l} saved_k + Σ_k retained_k + Σ_{k>l} grad_k + backward_local_l
//   optimizer step: O   = base + Σ_k grad_k + optimizer transient
//   peak = max over all F_l, B_l and O.
// Optimizer offload (rules/optimizer_offload.hpp) takes the optimizer state out of base
// (and with gradient offload every grad_k, backward then holding only the gradients in
// flight); the step holds the optimizer window instead (StepContext).
// Inference step: input + resident weights + resident KV cache + windows + the
// inference activation reservation (reservation.hpp); the final plan charges the weights
// the pager's replay predicts (charge_pager_peak, pager_model.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "memscale/core/errors.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"

namespace memscale::model {

/// Techniques applied to one layer.
struct LayerState {
  bool checkpoint = false;
  bool offload_activations = false;  ///< training: saved activations; inference: the layer's KV cache
  bool offload_weights = false;
  std::int64_t chunks = 1;  ///< tile chunks; tiled when > 1
  bool tiled() const { return chunks > 1; }
  bool any() const { return checkpoint || offload_activations || offload_weights || tiled(); }
  bool operator==(const LayerState&) const = default;
};

/// Adam's foreach step allocates temporaries of about one copy of the parameters it
/// updates (torch._foreach_sqrt of exp_avg_sq); SGD (with or without momentum) updates in
/// place. Applied to the resident gradient bytes (same element count and dtype as the
/// trainable parameters).
inline double optimizer_transient_factor(const std::string& optimizer) {
  return optimizer == "adam" || optimizer == "adamw" ? 1.0 : 0.0;
}

/// Adam's per-tensor step (torch's default on CPU; foreach is the CUDA default) computes
/// each parameter's denominator as `exp_avg_sq.sqrt() / c`: two temporaries the size of the
/// parameter, while the previous parameter's denominator is still held (the loop variable is
/// rebound only once the new one exists). Its workspace is therefore the largest
/// `previous + 2 x current` over the tensors in the order the step visits them
/// (`param_bytes`, the graph's trainable_param_bytes; measured with the counting allocator on
/// torch 2.13: exact for one, two and many tensors of mixed sizes). Without the order it is
/// bounded by 3 x the largest tensor. The fused step allocates nothing (measured: 0 bytes).
inline std::uint64_t per_tensor_optimizer_workspace(const std::string& optimizer, std::uint64_t largest_param_bytes,
                                                     const std::vector<std::uint64_t>& param_bytes = {}) {
  if (optimizer != "adam" && optimizer != "adamw") return 0;
  if (param_bytes.empty()) return 3 * largest_param_bytes;
  std::uint64_t workspace = 0, previous = 0;
  for (const std::uint64_t bytes : param_bytes) {
    workspace = std::max(workspace, previous + 2 * bytes);
    previous = bytes;
  }
  return workspace;
}

/// The implementation a graph's optimizer steps with on this machine: graph.optimizer_impl,
/// or for "default" torch's choice for the device (per_tensor on CPU, foreach on CUDA).
inline std::string resolved_optimizer_impl(const std::string& impl, bool has_gpu) {
  if (impl != "default") return impl;
  return has_gpu ? "foreach" : "per_tensor";
}

/// Step-wide inputs of the per-layer terms.
struct StepContext {
  bool training = true;
  std::uint64_t prefetch_n_ahead = 1;  ///< offloaded layers fetched ahead of the one computing
  double optimizer_transient = 0.0;    ///< optimizer_transient_factor(graph.optimizer)
  std::uint64_t optimizer_workspace_bytes = 0;  ///< CPU per-tensor optimizer: a fixed workspace instead
  bool data_parallel = false;          ///< more than one device: DDP gradient buckets
  std::uint64_t element_bytes = 4;     ///< bytes per element of the graph's dtype
  std::uint64_t input_bytes = 0;       ///< graph input, resident through the step
  std::uint64_t reservation_bytes = 0; ///< inference: activation reservation on this device
  /// Share of a layer's profiled forward FLOPs one step runs: 1 in training; 1/seq for an
  /// inference graph with a KV cache (one decode step computes one token per sequence).
  double step_flops_share = 1.0;
  /// Optimizer offload: the state (and with offload_gradients the gradients) on the next
  /// tier, streamed window by window by memscale.optim.OffloadedOptimizer.
  bool offload_optimizer_state = false;
  bool offload_gradients = false;
  /// What the offloaded step holds on top of the resident weights: three windows of state
  /// (+ gradients when offloaded): the one stepping, the next being read, the previous
  /// being written; plus the step's temporaries for one window.
  std::uint64_t optimizer_window_bytes = 0;
  /// Offloaded gradients in backward: the one its hook is storing and the previous one
  /// still being written.
  std::uint64_t gradients_in_flight_bytes = 0;
};

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return b <= 1 ? a : (a + b - 1) / b; }
inline std::int64_t s64(std::uint64_t v) { return static_cast<std::int64_t>(v); }

/// A layer's terms in the training-step model, bytes on the device. See the file comment.
struct TrainTerms {
  std::int64_t saved = 0;           ///< kept on the device from its forward to its backward
  std::int64_t retained = 0;        ///< kept from its forward until backward ends, whatever the techniques
  std::int64_t activation_window = 0;  ///< saved bytes sent to another tier (one layer returns at a time)
  std::int64_t forward_local = 0;   ///< its own peak during forward, over what is already live
  std::int64_t backward_local = 0;  ///< its own peak during backward (incoming gradient included)
  std::int64_t static_bytes = 0;    ///< params + buffers + optimizer state (+ DDP bucket) resident
  std::int64_t grad = 0;            ///< gradients kept on the device once created
  std::int64_t weight_window = 0;   ///< params + buffers when paged in for its turn
  std::int64_t optimizer_transient = 0;
  bool operator==(const TrainTerms&) const = default;
};

/// A tiled output head is executed fused with its loss (memscale.nn.linear_cross_entropy):
/// the logits and their gradient never exist. Instead the fused loss makes the gradients
/// in forward and holds them until backward: one input-sized buffer (the gradient it passes
/// on) and the head's gradient accumulated in float32.
inline bool fused_head(const Layer& layer, const LayerState& state) {
  return state.tiled() && layer.kind == "lm_head";
}

/// Bytes of the weights a layer computes with, and of their gradient.
struct LayerWeights {
  std::uint64_t weights = 0, grads = 0;
};

/// A head tied to the embedding has its parameters counted there (param_bytes 0), yet it
/// reads its vocab x hidden weight and fills that weight's gradient like an untied one.
inline LayerWeights layer_weights(const Layer& layer, std::uint64_t element_bytes) {
  if (layer.param_bytes > 0 || layer.kind != "lm_head" || layer.dims.vocab <= 0 || layer.dims.hidden <= 0)
    return {layer.param_bytes, layer.grad_bytes};
  const std::uint64_t tied = static_cast<std::uint64_t>(layer.dims.vocab * layer.dims.hidden) * element_bytes;
  return {tied, tied};
}

/// Bytes a fused head + loss holds from its forward to its backward (see fused_head).
inline std::int64_t fused_head_buffers(const Layer& layer, const StepContext& ctx) {
  const std::uint64_t element = std::max<std::uint64_t>(ctx.element_bytes, 1);
  const std::uint64_t grads = layer_weights(layer, element).grads;
  return s64(layer.input_bytes) + s64(std::max(grads, grads / element * 4));
}

/// Working set of one slice of a fused head + loss in `chunks` slices: the slice's logits in
/// float32 (softmax and its gradient are computed in place there), plus, below float32,
/// the slice's logits in their own dtype (made before the float32 copy, and again when the
/// gradient is cast back for the matmuls) and the slice's input in float32 (for the
/// float32 weight gradient), plus a copy of its input (a forward that slices the hidden
/// states for shifted labels makes one).
inline std::int64_t fused_head_slice(const Layer& layer, std::int64_t chunks, const StepContext& ctx) {
  const std::int64_t out = s64(layer.output_bytes), in = s64(layer.input_bytes);
  // The logits' element size from their bytes and count (autocast may run the head below
  // the parameters' dtype), else the graph's dtype.
  const std::int64_t logits = layer.dims.batch * layer.dims.seq * layer.dims.vocab;
  const std::int64_t element = logits > 0 && out > 0 && out % logits == 0
                                   ? std::max<std::int64_t>(1, out / logits)
                                   : s64(std::max<std::uint64_t>(ctx.element_bytes, 1));
  const std::int64_t per_slice = out / element * 4 + (element < 4 ? out + in / element * 4 : 0);
  return in + ceil_div(per_slice, chunks);
}

/// Terms of `layer` under `state`. Checkpointing keeps only the input (the recompute
/// boundary) and recomputes the saved bytes in backward; tiling into c chunks runs each
/// chunk under checkpointing (as the executor does), so it too keeps only the input and
/// divides the working set (saved + transient) by c; activation offload moves what would be
/// kept to the next tier; weight offload moves params, buffers, grads and optimizer state.
/// A tiled output head is fused with its loss (fused_head): its gradient buffers take the
/// place of the logits and of their gradient, and stay on the device (they are not saved
/// tensors, so activation offload cannot move them); one slice's logits are its working set.
/// Retained bytes (referenced outside autograd: a KV cache object, the output a loss outside
/// the model holds) are allocated by the forward and stay until backward ends: no technique
/// moves them, and a recompute allocates them once more.
inline TrainTerms train_terms(const Layer& layer, const LayerState& state, const StepContext& ctx) {
  const std::int64_t a = s64(layer.activation_bytes), t = s64(layer.transient_bytes);
  const std::int64_t in = s64(layer.input_bytes);
  const bool fused = fused_head(layer, state);
  // A fused head still keeps what it saves before its logits Linear (a BERT-style
  // transform): its saved bytes less the loss's log-softmax (logits-sized) and its input.
  const std::int64_t internals = fused ? std::max<std::int64_t>(0, a - s64(layer.output_bytes) - in) : 0;
  const std::int64_t held = fused ? fused_head_buffers(layer, ctx) + internals : 0;
  const std::int64_t out = fused ? held : s64(layer.output_bytes);
  const bool recomputed = state.checkpoint || state.tiled();
  const std::int64_t body = fused            ? fused_head_slice(layer, state.chunks, ctx)
                            : state.tiled() ? ceil_div(a + t, state.chunks)
                                            : a + t;
  const std::int64_t kept = fused ? held : recomputed ? in : a;
  const bool moved = state.offload_activations && !fused;
  TrainTerms terms;
  terms.saved = moved ? 0 : kept;
  terms.activation_window = moved ? kept : 0;
  // The input is live throughout the layer's forward; a tiled layer also accumulates its
  // whole output while one chunk's working set is live.
  const std::int64_t retained = s64(layer.retained_bytes);
  terms.retained = retained;
  terms.forward_local = in + (state.tiled() ? out : 0) + body + retained;
  // Backward starts with the incoming gradient (output-sized; none reaches a layer before
  // every trainable parameter); a recomputed layer holds its boundary while it recomputes
  // and then runs backward (its recompute makes the retained tensors again beside the
  // ones still held).
  terms.backward_local = (layer.receives_grad ? out : 0) + (recomputed ? in + retained : 0) + body;
  // FSDP2 (distributed.hpp). Forward: the group's unsharded copy while it computes; before
  // that, while gathering, the all-gather's input (a copy of the shard) and output beside
  // the copy. Backward: its gathered copy and the group prefetched ahead; the
  // reduce-scatter's full-size input is made once its backward has freed what it saved.
  const LayerSharding& shard = layer.sharding;
  if (shard.gathered_bytes > 0) {
    const std::int64_t gathered = s64(shard.gathered_bytes);
    terms.forward_local =
        std::max(terms.forward_local + gathered, in + 2 * gathered + s64(layer.param_bytes));
  }
  terms.backward_local += s64(shard.gathered_bytes) + s64(shard.prefetch_bytes) +
                          std::max<std::int64_t>(0, s64(shard.reduce_scatter_bytes) - a);
  const std::int64_t weights = s64(layer.param_bytes) + s64(layer.buffer_bytes) + s64(shard.kept_gathered_bytes);
  const std::int64_t grad = s64(layer.grad_bytes);
  if (state.offload_weights) {
    terms.weight_window = weights;
  } else {
    terms.static_bytes = weights + (ctx.offload_optimizer_state ? 0 : s64(layer.optimizer_bytes)) +
                         (ctx.data_parallel ? grad : 0);
    terms.grad = ctx.offload_gradients ? 0 : grad;
    // An offloaded step's temporaries are one window's (in optimizer_window_bytes).
    if (!ctx.offload_optimizer_state)
      terms.optimizer_transient = static_cast<std::int64_t>(ctx.optimizer_transient * static_cast<double>(grad));
  }
  return terms;
}

/// A layer's terms in the inference-step model.
struct InferTerms {
  std::int64_t weights = 0;        ///< params + buffers resident
  std::int64_t weight_window = 0;  ///< params + buffers paged in for its turn
  std::int64_t kv = 0;             ///< KV cache resident
  std::int64_t kv_window = 0;      ///< KV cache streamed in for its turn
  bool operator==(const InferTerms&) const = default;
};

/// Weight offload in inference pages a layer's parameters (the pager's units hold
/// parameters only); its buffers stay on the device.
inline InferTerms infer_terms(const Layer& layer, const LayerState& state) {
  InferTerms terms;
  (state.offload_weights ? terms.weight_window : terms.weights) = s64(layer.param_bytes);
  terms.weights += s64(layer.buffer_bytes);
  (state.offload_activations ? terms.kv_window : terms.kv) = s64(layer.kv_cache_bytes);
  return terms;
}

/// Window of paged bytes: the layer computing plus `prefetch` layers fetched ahead, each at
/// most the largest paged layer, and never more than everything paged.
inline std::int64_t window_bytes(std::int64_t largest, std::int64_t total, std::uint64_t prefetch) {
  return std::min(total, largest * (1 + static_cast<std::int64_t>(prefetch)));
}

/// Where the peak happens and what it is made of.
struct PeakReport {
  std::uint64_t peak = 0;
  std::string phase;      ///< forward|backward|optimizer_step|inference
  std::int64_t layer = -1;
  // components (sum to peak)
  std::uint64_t input = 0, static_bytes = 0, grads = 0, saved_activations = 0, layer_working = 0, windows = 0,
                kv_cache = 0, reservation = 0;

  /// Name and bytes of the largest component.
  std::pair<std::string, std::uint64_t> dominant() const {
    std::vector<std::pair<std::string, std::uint64_t>> parts = {
        {phase == "inference" ? "weights" : "weights and optimizer state", static_bytes}, {"gradients", grads},
        {"saved activations", saved_activations},      {"the layer's own working set", layer_working},
        {"offload/prefetch windows", windows},          {"KV cache", kv_cache},
        {"activation reservation", reservation},       {"graph input", input}};
    std::pair<std::string, std::uint64_t> best = parts[0];
    for (const auto& p : parts)
      if (p.second > best.second) best = p;
    return best;
  }
};

inline std::uint64_t u64(std::int64_t v) { return static_cast<std::uint64_t>(std::max<std::int64_t>(v, 0)); }

/// One position of a training step in the memory model: the bytes live there and what they
/// are made of (the same split as PeakReport's components).
struct StepPosition {
  const char* phase = "";  ///< forward|backward|optimizer_step
  std::int64_t layer = -1;  ///< -1 for the optimizer step
  std::int64_t bytes = 0;
  std::int64_t saved = 0, grads = 0, local = 0, windows = 0;
};

/// Visits every position of the training step in execution order (each layer's forward,
/// then each layer's backward in reverse order, then the optimizer step) with the bytes the
/// model predicts there; returns the static bytes (params, buffers, optimizer state, graph
/// input). The single implementation of the formulas in the file comment: the peak
/// (evaluate_training) and the timeline (training_timeline) are both its visitors. O(n).
template <class Visit>
std::int64_t visit_training_step(const ModelGraph& graph, const std::vector<LayerState>& states,
                                 const StepContext& ctx, Visit&& visit) {
  const std::size_t n = graph.layers.size();
  std::vector<TrainTerms> terms(n);
  std::int64_t base = s64(ctx.input_bytes), grads = 0, opt_t = 0, aw = 0, ww_max = 0, ww_sum = 0, retained = 0;
  for (std::size_t l = 0; l < n; ++l) {
    terms[l] = train_terms(graph.layers[l], states[l], ctx);
    base += terms[l].static_bytes;
    retained += terms[l].retained;
    grads += terms[l].grad;
    opt_t += terms[l].optimizer_transient;
    aw = std::max(aw, terms[l].activation_window);
    ww_max = std::max(ww_max, terms[l].weight_window);
    ww_sum += terms[l].weight_window;
  }
  const std::int64_t windows = aw + window_bytes(ww_max, ww_sum, ctx.prefetch_n_ahead);
  std::int64_t saved_before = 0, retained_before = 0;  // Σ_{k<l}
  for (std::size_t l = 0; l < n; ++l) {
    const std::int64_t kept = saved_before + retained_before;
    visit(StepPosition{"forward", static_cast<std::int64_t>(l), base + windows + kept + terms[l].forward_local, kept, 0,
                       terms[l].forward_local, windows});
    saved_before += terms[l].saved;
    retained_before += terms[l].retained;
  }
  std::int64_t grad_after = s64(ctx.gradients_in_flight_bytes);  // Σ_{k>l} grad_k (+ those in flight)
  for (std::size_t l = n; l-- > 0;) {
    saved_before -= terms[l].saved;
    const std::int64_t kept = saved_before + retained;
    visit(StepPosition{"backward", static_cast<std::int64_t>(l),
                       base + windows + kept + grad_after + terms[l].backward_local, kept, grad_after,
                       terms[l].backward_local, windows});
    grad_after += terms[l].grad;
  }
  opt_t += s64(ctx.optimizer_workspace_bytes) + s64(ctx.optimizer_window_bytes);
  visit(StepPosition{"optimizer_step", -1, base + grads + opt_t, 0, grads, opt_t, 0});
  return base;
}

/// Full O(n) evaluation of the training-step peak. The engine tracks the same figure
/// incrementally; tests check both agree.
inline PeakReport evaluate_training(const ModelGraph& graph, const std::vector<LayerState>& states,
                                    const StepContext& ctx) {
  // Ties go to the earliest of F_0, B_0, F_1, B_1, ..., O (the order the peak report has
  // always named), whatever the order of the visit.
  const auto rank = [&](const StepPosition& p) {
    return p.layer < 0 ? 2 * static_cast<std::int64_t>(graph.layers.size()) : 2 * p.layer + (p.phase[0] == 'b');
  };
  StepPosition best;
  bool any = false;
  const std::int64_t base = visit_training_step(graph, states, ctx, [&](const StepPosition& p) {
    if (!any || p.bytes > best.bytes || (p.bytes == best.bytes && rank(p) < rank(best))) best = p, any = true;
  });
  PeakReport r;
  r.peak = u64(best.bytes);
  r.phase = best.phase;
  r.layer = best.layer;
  r.input = ctx.input_bytes;
  r.static_bytes = u64(base - s64(ctx.input_bytes));
  r.grads = u64(best.grads);
  r.saved_activations = u64(best.saved);
  r.layer_working = u64(best.local);
  r.windows = u64(best.windows);
  return r;
}

/// Bytes the model predicts at every position of the training step (visit_training_step's
/// order); its maximum is evaluate_training's peak. Computed only when a timeline is asked
/// for (reports), never inside the engine's search.
inline std::vector<StepPosition> training_timeline(const ModelGraph& graph, const std::vector<LayerState>& states,
                                                   const StepContext& ctx) {
  if (states.size() != graph.layers.size())
    throw MemScaleError("memory model: " + std::to_string(states.size()) + " layer states for a graph of " +
                        std::to_string(graph.layers.size()) + " layers");
  std::vector<StepPosition> out;
  out.reserve(2 * graph.layers.size() + 1);
  visit_training_step(graph, states, ctx, [&](const StepPosition& p) { out.push_back(p); });
  return out;
}

/// Full evaluation of the inference-step peak.
inline PeakReport evaluate_inference(const ModelGraph& graph, const std::vector<LayerState>& states,
                                     const StepContext& ctx) {
  std::int64_t weights = 0, kv = 0, ww_max = 0, ww_sum = 0, kw_max = 0, kw_sum = 0;
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    const InferTerms t = infer_terms(graph.layers[l], states[l]);
    weights += t.weights;
    kv += t.kv;
    ww_max = std::max(ww_max, t.weight_window);
    ww_sum += t.weight_window;
    kw_max = std::max(kw_max, t.kv_window);
    kw_sum += t.kv_window;
  }
  PeakReport r;
  r.phase = "inference";
  r.input = ctx.input_bytes;
  r.static_bytes = u64(weights);
  r.kv_cache = u64(kv);
  r.windows = u64(window_bytes(ww_max, ww_sum, ctx.prefetch_n_ahead) + window_bytes(kw_max, kw_sum, ctx.prefetch_n_ahead));
  r.reservation = ctx.reservation_bytes;
  r.peak = r.input + r.static_bytes + r.kv_cache + r.windows + r.reservation;
  return r;
}

/// The inference peak with the paged weights charged as the pager will hold them:
/// `pager_peak` is its predicted resident peak (pager_model.hpp: the parameters of the
/// layers kept on the device plus what its LRU holds of the paged ones within its resident
/// limit), in place of the kept parameters plus the weight window of evaluate_inference.
/// Buffers stay counted as resident weights; the KV window is unchanged.
inline PeakReport charge_pager_peak(const ModelGraph& graph, const std::vector<LayerState>& states,
                                    const StepContext& ctx, std::uint64_t pager_peak) {
  PeakReport r = evaluate_inference(graph, states, ctx);
  std::int64_t buffers = 0, kept = 0, kw_max = 0, kw_sum = 0;
  for (std::size_t l = 0; l < graph.layers.size(); ++l) {
    const InferTerms t = infer_terms(graph.layers[l], states[l]);
    buffers += s64(graph.layers[l].buffer_bytes);
    kept += t.weights - s64(graph.layers[l].buffer_bytes);
    kw_max = std::max(kw_max, t.kv_window);
    kw_sum += t.kv_window;
  }
  if (pager_peak < u64(kept))
    throw MemScaleError("memory model: a pager peak of " + std::to_string(pager_peak) + " bytes is below the " +
                        std::to_string(kept) + " bytes of parameters it keeps resident");
  r.static_bytes = u64(buffers + kept);
  r.windows = pager_peak - u64(kept) + u64(window_bytes(kw_max, kw_sum, ctx.prefetch_n_ahead));
  r.peak = r.input + r.static_bytes + r.kv_cache + r.windows + r.reservation;
  return r;
}

inline PeakReport evaluate(const ModelGraph& graph, const std::vector<LayerState>& states, const StepContext& ctx) {
  if (states.size() != graph.layers.size())
    throw MemScaleError("memory model: " + std::to_string(states.size()) + " layer states for a graph of " +
                        std::to_string(graph.layers.size()) + " layers");
  return ctx.training ? evaluate_training(graph, states, ctx) : evaluate_inference(graph, states, ctx);
}

/// The layer's resident bytes between its forward and backward (training) or during the
/// step (inference): what Plan's bytes_before / bytes_after report.
inline std::uint64_t layer_resident_bytes(const Layer& layer, const LayerState& state, const StepContext& ctx) {
  if (!ctx.training) {
    const InferTerms t = infer_terms(layer, state);
    return u64(t.weights + t.kv);
  }
  const TrainTerms t = train_terms(layer, state, ctx);
  return u64(t.static_bytes + t.saved + t.retained);
}

/// The same resident bytes by kind (grads included: they exist from the layer's
/// backward to the optimizer step).
inline LayerBytes layer_resident_terms(const Layer& layer, const LayerState& state, const StepContext& ctx) {
  LayerBytes b;
  if (!ctx.training) {
    const InferTerms t = infer_terms(layer, state);
    b.weights = u64(t.weights);
    b.kv_cache = u64(t.kv);
    return b;
  }
  const TrainTerms t = train_terms(layer, state, ctx);
  if (!state.offload_weights) {
    b.weights = layer.param_bytes + layer.buffer_bytes;
    b.optimizer = ctx.offload_optimizer_state ? 0 : layer.optimizer_bytes;
  }
  b.grads = u64(t.grad);
  b.activations = u64(t.saved + t.retained);
  return b;
}

}  // namespace memscale::model
