// Scaling a profiled ModelGraph along one dimension (batch or seq) from profiles of the
// same model at two or three sizes: every byte and FLOP count of every layer is fitted as
// a polynomial in the size through the profiled points (per layer, per term), and the
// graph at any size is that polynomial evaluated there. Two profiles fit a line (what
// activations do in batch); three fit a quadratic where the profiles show curvature (the
// seq x seq scores of attention) and a line where they are collinear (a fit through
// collinear points has no quadratic term). A negative curvature is not a memory law (a
// step does not need less per token as the sequence grows): such a term falls back to the
// line through the outermost points. Terms the profiles agree on (weights, gradients,
// optimizer state, dims other than the varied one) stay as they are. Pure and
// deterministic; docs/fit.md has the model and its limits.
//
//   memscale::GraphScaling s({g_at_1, g_at_2}, {1, 2}, "batch");
//   memscale::ModelGraph g8 = s.at(8);   // == the profile at batch 8 where terms are linear
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "memscale/core/errors.hpp"
#include "memscale/core/model_graph.hpp"

namespace memscale {

/// The dimensions a fit can vary.
inline const std::vector<std::string>& fit_dimensions() {
  static const std::vector<std::string> dims = {"batch", "seq"};
  return dims;
}

/// One term as a polynomial c0 + c1 s + c2 s^2 in the size s (c2 = 0 for a line).
struct TermFit {
  long double c0 = 0, c1 = 0, c2 = 0;

  /// Fits through the points (sizes[i], values[i]) (2 or 3 points, distinct sizes ascending).
  static TermFit through(const std::vector<std::int64_t>& sizes, const std::vector<long double>& values) {
    const long double x0 = static_cast<long double>(sizes.front()), y0 = values.front();
    const long double xn = static_cast<long double>(sizes.back()), yn = values.back();
    TermFit line;
    line.c1 = (yn - y0) / (xn - x0);
    line.c0 = y0 - line.c1 * x0;
    if (sizes.size() == 2) return line;
    // Newton's divided differences through the three points
    const long double x1 = static_cast<long double>(sizes[1]), y1 = values[1];
    const long double d01 = (y1 - y0) / (x1 - x0), d12 = (yn - y1) / (xn - x1);
    const long double c2 = (d12 - d01) / (xn - x0);
    if (!(c2 > 0)) return line;  // collinear, or a curvature no memory law has
    TermFit q;
    q.c2 = c2;
    q.c1 = d01 - c2 * (x0 + x1);
    q.c0 = y0 - q.c1 * x0 - c2 * x0 * x0;
    return q;
  }

  long double at(std::int64_t size) const {
    const long double s = static_cast<long double>(size);
    return c0 + c1 * s + c2 * s * s;
  }
  bool quadratic() const { return c2 != 0; }
};

/// Profiles of one model at several sizes of one dimension, and the graph at any size.
class GraphScaling {
 public:
  /// `graphs[i]` profiled at `sizes[i]` of `dim` ("batch" or "seq"). 2 or 3 profiles of the
  /// same layers (names and kinds in the same order); sizes positive and distinct.
  GraphScaling(std::vector<ModelGraph> graphs, std::vector<std::int64_t> sizes, std::string dim)
      : graphs_(std::move(graphs)), sizes_(std::move(sizes)), dim_(std::move(dim)) {
    json_fields::one_of(dim_, fit_dimensions(), "fit.vary");
    if (graphs_.size() < 2 || graphs_.size() > 3 || graphs_.size() != sizes_.size())
      throw ConfigError("fit: got " + std::to_string(graphs_.size()) + " profile(s) at " +
                        std::to_string(sizes_.size()) + " size(s); expected 2 or 3 profiles, one per size");
    // sort by size (deterministic), then check the points are usable
    std::vector<std::size_t> order(graphs_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes_[a] < sizes_[b]; });
    std::vector<ModelGraph> g;
    std::vector<std::int64_t> s;
    for (auto i : order) g.push_back(std::move(graphs_[i])), s.push_back(sizes_[i]);
    graphs_ = std::move(g), sizes_ = std::move(s);
    for (std::size_t i = 0; i < sizes_.size(); ++i) {
      if (sizes_[i] < 1) throw ConfigError("fit: profile size " + std::to_string(sizes_[i]) + " of " + dim_ + " is not positive");
      if (i > 0 && sizes_[i] == sizes_[i - 1])
        throw ConfigError("fit: two profiles at the same " + dim_ + " " + std::to_string(sizes_[i]) +
                          "; the sizes must be distinct");
      check_same_layers(graphs_[0], graphs_[i]);
    }
  }

  const std::string& dim() const { return dim_; }
  const std::vector<std::int64_t>& sizes() const { return sizes_; }
  const std::vector<ModelGraph>& graphs() const { return graphs_; }

  /// The fitted polynomial of one term, given its value in each profile.
  template <class Get>
  TermFit term(Get&& get) const {
    std::vector<long double> values;
    for (const auto& g : graphs_) values.push_back(static_cast<long double>(get(g)));
    return TermFit::through(sizes_, values);
  }

  /// Whether any layer's saved activations or workspace grow faster than linearly.
  bool any_quadratic() const {
    for (std::size_t i = 0; i < graphs_.front().layers.size(); ++i) {
      if (term([&](const ModelGraph& g) { return g.layers[i].activation_bytes; }).quadratic()) return true;
      if (term([&](const ModelGraph& g) { return g.layers[i].transient_bytes; }).quadratic()) return true;
    }
    return false;
  }

  /// The graph at `size` of the dimension: every count fitted per layer and evaluated
  /// there (rounded, never negative); what no fit applies to (names, kinds, tileable axes,
  /// capabilities) from the largest profile.
  ModelGraph at(std::int64_t size) const {
    if (size < 1) throw ConfigError("fit: " + dim_ + " " + std::to_string(size) + " is not positive");
    ModelGraph out = graphs_.back();
    auto u64 = [&](auto get) { return to_u64(term(get).at(size)); };
    auto i64 = [&](auto get) { return static_cast<std::int64_t>(to_u64(term(get).at(size))); };
    (dim_ == "batch" ? out.batch : out.seq) = size;
    out.input_bytes = u64([](const ModelGraph& g) { return g.input_bytes; });
    out.largest_param_bytes = u64([](const ModelGraph& g) { return g.largest_param_bytes; });
    for (std::size_t i = 0; i < out.layers.size(); ++i) {
      Layer& l = out.layers[i];
#define MEMSCALE_FIT_U64(field) l.field = u64([i](const ModelGraph& g) { return g.layers[i].field; })
#define MEMSCALE_FIT_DIM(field) l.dims.field = i64([i](const ModelGraph& g) { return g.layers[i].dims.field; })
      MEMSCALE_FIT_U64(param_bytes);
      MEMSCALE_FIT_U64(buffer_bytes);
      MEMSCALE_FIT_U64(grad_bytes);
      MEMSCALE_FIT_U64(optimizer_bytes);
      MEMSCALE_FIT_U64(activation_bytes);
      MEMSCALE_FIT_U64(retained_bytes);
      MEMSCALE_FIT_U64(transient_bytes);
      MEMSCALE_FIT_U64(input_bytes);
      MEMSCALE_FIT_U64(output_bytes);
      MEMSCALE_FIT_U64(kv_cache_bytes);
      MEMSCALE_FIT_U64(flops);
      MEMSCALE_FIT_U64(measured_peak_bytes);
      MEMSCALE_FIT_U64(measured_activation_bytes);
      MEMSCALE_FIT_DIM(hidden);
      MEMSCALE_FIT_DIM(intermediate);
      MEMSCALE_FIT_DIM(heads);
      MEMSCALE_FIT_DIM(vocab);
      MEMSCALE_FIT_DIM(seq);
      MEMSCALE_FIT_DIM(batch);
#undef MEMSCALE_FIT_U64
#undef MEMSCALE_FIT_DIM
    }
    return out;
  }

 private:
  static std::uint64_t to_u64(long double v) {
    if (!(v > 0)) return 0;
    return static_cast<std::uint64_t>(std::llround(v));
  }

  static void check_same_layers(const ModelGraph& a, const ModelGraph& b) {
    auto differ = [](const std::string& what) {
      throw ConfigError("fit: the profiles differ in " + what +
                        "; profile the same model with inputs that differ only in the varied dimension");
    };
    if (a.layers.size() != b.layers.size())
      differ("layer count (" + std::to_string(a.layers.size()) + " vs " + std::to_string(b.layers.size()) + ")");
    for (std::size_t i = 0; i < a.layers.size(); ++i)
      if (a.layers[i].name != b.layers[i].name || a.layers[i].kind != b.layers[i].kind)
        differ("layer " + std::to_string(i) + " ('" + a.layers[i].name + "' vs '" + b.layers[i].name + "')");
    if (a.training != b.training || a.optimizer != b.optimizer || a.dtype != b.dtype)
      differ("training, optimizer or dtype");
    if (a.trainable_param_bytes != b.trainable_param_bytes) differ("trainable parameters");
  }

  std::vector<ModelGraph> graphs_;
  std::vector<std::int64_t> sizes_;
  std::string dim_;
};

}  // namespace memscale
