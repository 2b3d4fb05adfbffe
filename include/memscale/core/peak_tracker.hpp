// Incremental bookkeeping of the memory model (memory_model.hpp) for the engine's greedy
// loop: changing one layer's techniques updates the peak in O(log n) instead of
// re-evaluating every position (the engine tries thousands of what-ifs per plan).
//
// Training positions F_0..F_{n-1}, B_0..B_{n-1} live in a segment tree with range-add:
// a change of layer k's saved bytes shifts F_l and B_l for every l > k, a change of its
// gradient shifts B_l for every l < k, a change of its retained bytes F_l for l > k and
// every B_l, and its own forward/backward terms are point updates. Step-wide terms (base, windows, the optimizer step) are kept as scalars.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "memscale/core/memory_model.hpp"

namespace memscale::model {

/// The peak with how many positions reach it; `where` identifies the first such position
/// (tracker-specific). Progress in the greedy loop = a lexicographically smaller
/// (value, count): lower peak, or as high but at fewer places.
struct Peak {
  std::int64_t value = 0;
  std::int64_t count = 0;
  std::int64_t where = 0;
  bool better_than(const Peak& o) const { return value < o.value || (value == o.value && count < o.count); }
};

/// Which places a change of one layer can lower (windows aside). The engine retries a
/// deferred change only when the peak moves to such a place. Places are the trackers'
/// `where` codes: l = forward of layer l, n + l = its backward, 2n = the optimizer step.
struct Reach {
  std::size_t layer = 0;
  bool later = false;             ///< forward and backward of every later layer (less kept)
  bool own_forward = false, own_backward = false;
  bool earlier_backward = false;  ///< backward of every earlier layer and the optimizer step (fewer grads)
  bool everywhere = false;        ///< less static memory (every place)
};

/// True when a change with `r` can lower place `where` of an n-layer step.
inline bool reaches(const Reach& r, std::int64_t where, std::size_t n_layers) {
  if (r.everywhere) return true;
  const auto n = static_cast<std::int64_t>(n_layers), l = static_cast<std::int64_t>(r.layer);
  if (where >= 2 * n) return r.earlier_backward;
  const std::int64_t at = where % n;
  const bool backward = where >= n;
  return (r.later && at > l) || (at == l && (backward ? r.own_backward : r.own_forward)) ||
         (backward && r.earlier_backward && at < l);
}

/// Range add, global (max, count of max, leftmost argmax).
class MaxAddTree {
 public:
  explicit MaxAddTree(const std::vector<std::int64_t>& values) : n_(values.size()) {
    nodes_.resize(4 * std::max<std::size_t>(n_, 1));
    if (n_ > 0) build(1, 0, n_ - 1, values);
  }
  /// Adds `delta` to positions [lo, hi] (inclusive); an empty range is a no-op.
  void add(std::size_t lo, std::size_t hi, std::int64_t delta) {
    if (n_ == 0 || lo > hi || delta == 0) return;
    add(1, 0, n_ - 1, lo, hi, delta);
  }
  std::int64_t max() const { return nodes_[1].max; }
  std::int64_t count() const { return nodes_[1].count; }
  std::int64_t argmax() const { return nodes_[1].arg; }

 private:
  struct Node {
    std::int64_t max = 0, tag = 0, count = 0, arg = 0;
  };
  void pull(std::size_t i) {
    const Node &l = nodes_[2 * i], &r = nodes_[2 * i + 1];
    Node& n = nodes_[i];
    if (l.max > r.max) n.max = l.max, n.count = l.count, n.arg = l.arg;
    else if (r.max > l.max) n.max = r.max, n.count = r.count, n.arg = r.arg;
    else n.max = l.max, n.count = l.count + r.count, n.arg = l.arg;
    n.max += n.tag;  // the node's own pending add applies to everything under it
  }
  void build(std::size_t i, std::size_t lo, std::size_t hi, const std::vector<std::int64_t>& v) {
    if (lo == hi) {
      nodes_[i] = {v[lo], 0, 1, static_cast<std::int64_t>(lo)};
      return;
    }
    const std::size_t mid = (lo + hi) / 2;
    build(2 * i, lo, mid, v);
    build(2 * i + 1, mid + 1, hi, v);
    pull(i);
  }
  void add(std::size_t i, std::size_t lo, std::size_t hi, std::size_t a, std::size_t b, std::int64_t d) {
    if (b < lo || hi < a) return;
    if (a <= lo && hi <= b) {
      nodes_[i].max += d;
      nodes_[i].tag += d;
      return;
    }
    const std::size_t mid = (lo + hi) / 2;
    add(2 * i, lo, mid, a, b, d);
    add(2 * i + 1, mid + 1, hi, a, b, d);
    pull(i);
  }
  std::size_t n_;
  std::vector<Node> nodes_;
};

/// Point assignment, global max and sum (the largest paged layer and the total paged).
class MaxSumTree {
 public:
  explicit MaxSumTree(std::size_t n) : size_(1) {
    while (size_ < std::max<std::size_t>(n, 1)) size_ *= 2;
    max_.assign(2 * size_, 0);
  }
  void set(std::size_t i, std::int64_t value) {
    std::size_t p = i + size_;
    sum_ += value - max_[p];
    max_[p] = value;
    for (p /= 2; p >= 1; p /= 2) max_[p] = std::max(max_[2 * p], max_[2 * p + 1]);
  }
  std::int64_t max() const { return max_[1]; }
  std::int64_t sum() const { return sum_; }

 private:
  std::size_t size_;
  std::vector<std::int64_t> max_;
  std::int64_t sum_ = 0;
};

/// Training-step peak under changing per-layer techniques.
class TrainingTracker {
 public:
  TrainingTracker(const ModelGraph& graph, const StepContext& ctx, const std::vector<LayerState>& states)
      : graph_(graph), ctx_(ctx), states_(states), n_(graph.layers.size()), tree_({}), act_window_(n_),
        weight_window_(n_) {
    terms_.resize(n_);
    base_ = s64(ctx.input_bytes);
    for (std::size_t l = 0; l < n_; ++l) {
      terms_[l] = train_terms(graph.layers[l], states_[l], ctx_);
      base_ += terms_[l].static_bytes;
      grads_ += terms_[l].grad;
      opt_t_ += terms_[l].optimizer_transient;
      act_window_.set(l, terms_[l].activation_window);
      weight_window_.set(l, terms_[l].weight_window);
    }
    std::vector<std::int64_t> values(2 * n_);
    std::vector<std::int64_t> grad_after(n_ + 1, s64(ctx.gradients_in_flight_bytes));
    for (std::size_t l = n_; l-- > 0;) grad_after[l] = grad_after[l + 1] + terms_[l].grad;
    std::int64_t retained = 0;
    for (const auto& t : terms_) retained += t.retained;
    std::int64_t saved_before = 0, retained_before = 0;
    for (std::size_t l = 0; l < n_; ++l) {
      values[l] = saved_before + retained_before + terms_[l].forward_local;
      values[n_ + l] = saved_before + retained + grad_after[l + 1] + terms_[l].backward_local;
      saved_before += terms_[l].saved;
      retained_before += terms_[l].retained;
    }
    tree_ = MaxAddTree(values);
  }

  const LayerState& state(std::size_t l) const { return states_[l]; }
  const std::vector<LayerState>& states() const { return states_; }

  void set(std::size_t l, const LayerState& s) {
    const TrainTerms next = train_terms(graph_.layers[l], s, ctx_);
    const TrainTerms& prev = terms_[l];
    if (const std::int64_t d = next.saved - prev.saved; d != 0 && l + 1 < n_) {
      tree_.add(l + 1, n_ - 1, d);
      tree_.add(n_ + l + 1, 2 * n_ - 1, d);
    }
    if (const std::int64_t d = next.grad - prev.grad; d != 0 && l > 0) tree_.add(n_, n_ + l - 1, d);
    if (const std::int64_t d = next.retained - prev.retained; d != 0) {  // technique-independent today
      if (l + 1 < n_) tree_.add(l + 1, n_ - 1, d);
      tree_.add(n_, 2 * n_ - 1, d);
    }
    tree_.add(l, l, next.forward_local - prev.forward_local);
    tree_.add(n_ + l, n_ + l, next.backward_local - prev.backward_local);
    base_ += next.static_bytes - prev.static_bytes;
    grads_ += next.grad - prev.grad;
    opt_t_ += next.optimizer_transient - prev.optimizer_transient;
    if (next.activation_window != prev.activation_window) act_window_.set(l, next.activation_window);
    if (next.weight_window != prev.weight_window) weight_window_.set(l, next.weight_window);
    terms_[l] = next;
    states_[l] = s;
  }

  /// The places a change of layer l to `next` lowers.
  Reach reach(std::size_t l, const LayerState& next) const {
    const TrainTerms t = train_terms(graph_.layers[l], next, ctx_);
    const TrainTerms& now = terms_[l];
    Reach r;
    r.layer = l;
    r.later = t.saved < now.saved;
    r.own_forward = t.forward_local < now.forward_local;
    r.own_backward = t.backward_local < now.backward_local;
    r.earlier_backward = t.grad < now.grad;
    r.everywhere = t.static_bytes < now.static_bytes || t.optimizer_transient < now.optimizer_transient;
    return r;
  }
  /// where: l = forward of layer l, n + l = backward of layer l, 2n = optimizer step.
  Peak peak() const {
    const std::int64_t windows =
        act_window_.max() + window_bytes(weight_window_.max(), weight_window_.sum(), ctx_.prefetch_n_ahead);
    Peak p{base_ + windows + tree_.max(), tree_.count(), tree_.argmax()};
    const std::int64_t step = base_ + grads_ + opt_t_ + static_cast<std::int64_t>(ctx_.optimizer_workspace_bytes) +
                               static_cast<std::int64_t>(ctx_.optimizer_window_bytes);
    if (step > p.value) p = {step, 1, static_cast<std::int64_t>(2 * n_)};
    else if (step == p.value) p.count += 1;
    return p;
  }

 private:
  const ModelGraph& graph_;
  StepContext ctx_;
  std::vector<LayerState> states_;
  std::size_t n_;
  std::vector<TrainTerms> terms_;
  MaxAddTree tree_;
  MaxSumTree act_window_, weight_window_;
  std::int64_t base_ = 0, grads_ = 0, opt_t_ = 0;
};

/// Inference-step peak under changing per-layer techniques (one position: the step).
class InferenceTracker {
 public:
  InferenceTracker(const ModelGraph& graph, const StepContext& ctx, const std::vector<LayerState>& states)
      : graph_(graph), ctx_(ctx), states_(states), weight_window_(states.size()), kv_window_(states.size()) {
    terms_.resize(states_.size());
    for (std::size_t l = 0; l < states_.size(); ++l) {
      terms_[l] = infer_terms(graph.layers[l], states_[l]);
      resident_ += terms_[l].weights + terms_[l].kv;
      weight_window_.set(l, terms_[l].weight_window);
      kv_window_.set(l, terms_[l].kv_window);
    }
  }
  const LayerState& state(std::size_t l) const { return states_[l]; }
  const std::vector<LayerState>& states() const { return states_; }
  void set(std::size_t l, const LayerState& s) {
    const InferTerms next = infer_terms(graph_.layers[l], s);
    resident_ += next.weights + next.kv - terms_[l].weights - terms_[l].kv;
    if (next.weight_window != terms_[l].weight_window) weight_window_.set(l, next.weight_window);
    if (next.kv_window != terms_[l].kv_window) kv_window_.set(l, next.kv_window);
    terms_[l] = next;
    states_[l] = s;
  }
  /// One place (where = 0): every change that keeps less resident reaches it.
  Reach reach(std::size_t l, const LayerState& next) const {
    const InferTerms t = infer_terms(graph_.layers[l], next);
    Reach r;
    r.layer = l;
    r.everywhere = t.weights + t.kv < terms_[l].weights + terms_[l].kv;
    return r;
  }

  Peak peak() const {
    const std::int64_t windows = window_bytes(weight_window_.max(), weight_window_.sum(), ctx_.prefetch_n_ahead) +
                                 window_bytes(kv_window_.max(), kv_window_.sum(), ctx_.prefetch_n_ahead);
    return {s64(ctx_.input_bytes) + s64(ctx_.reservation_bytes) + resident_ + windows, 1, 0};
  }

 private:
  const ModelGraph& graph_;
  StepContext ctx_;
  std::vector<LayerState> states_;
  std::vector<InferTerms> terms_;
  MaxSumTree weight_window_, kv_window_;
  std::int64_t resident_ = 0;
};

}  // namespace memscale::model
