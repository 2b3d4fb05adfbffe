// Inference activation reservation (sized from model dims) and its calibration.
//
//   per-token buffer = max(hidden, intermediate) over the graph's layers    (widest buffer)
//   tokens per step  = reservation.prefill_tokens when the Config gives it (> 0), else
//                      batch x seq of the graph, seq capped at the model's max positions
//                      where known: the example inputs are of the generation's batch and
//                      total length, and their prefill is the biggest step of a KV-cached
//                      decoder (one forward over all tokens for any other model)
//   scaled           = widest x tokens x dtype bytes x safety factor
//   output head      = tokens x (vocab + hidden) x dtype bytes of the graph's lm_head layer:
//                      the logits the step's full forward returns, beside the head's input
//   per device       = max(min(scaled, flat_bytes), output head) + graph-capture headroom
//                      (GPU machines only); flat_bytes alone when the graph has no
//                      hidden/intermediate dims
//   total            = per device x device count
//
// The output head is a term of its own because the logits are not a per-layer buffer of
// hidden or intermediate width: vocab wide, they are the forward's output, allocated last
// (after the blocks' working set is freed, hence max, not sum) and held by the caller, so
// the safety factor does not cover them (HF Llama with a vocabulary 8x its inner width ran
// 1.41x over a budget of 0.25x its weights counting only max(hidden, intermediate)). They
// are counted for every token of the step, as the example's full forward produces them; a
// forward that returns only the last token's logits (Hugging Face's logits_to_keep) needs
// less, which is not detected.
//
// As in the seed, the cap only rules out reserving more than the flat value; the scaled
// figure is a heuristic. Unlike the seed, the safety factor can be fitted to measured
// peaks (calibrate_safety_factor) and the fitted factor travels into the plan.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/cost_model.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"

namespace memscale {

/// A fitted safety factor (see calibrate_safety_factor).
struct Calibration {
  double safety_factor = 0.0;         ///< smallest factor covering every sample (what plans use)
  double least_squares_factor = 0.0;  ///< best fit through the origin (the typical ratio)
  double min_ratio = 0.0, max_ratio = 0.0;
  std::size_t samples = 0;
  bool operator==(const Calibration&) const = default;
};

/// One measurement: the activation peak of an inference step (measured peak minus weights,
/// KV cache and graph-capture headroom) with the quantities the formula multiplies.
struct ReservationSample {
  std::int64_t widest_buffer = 0;
  std::int64_t tokens_per_step = 0;
  std::uint64_t dtype_bytes = 0;
  std::uint64_t measured_bytes = 0;
  bool operator==(const ReservationSample&) const = default;
};

/// Widest per-token buffer of the graph: max(hidden, intermediate) over its layers; 0 when
/// no layer records either.
inline std::int64_t widest_buffer(const ModelGraph& graph) {
  std::int64_t widest = 0;
  for (const auto& layer : graph.layers) widest = std::max({widest, layer.dims.hidden, layer.dims.intermediate});
  return widest;
}

/// Per-token bytes of the output head's moment: its logits (vocab wide) and its input
/// (hidden wide), in the graph's dtype; the widest lm_head layer's, 0 when no lm_head layer
/// records a vocabulary.
inline std::int64_t output_head_bytes_per_token(const ModelGraph& graph) {
  std::int64_t widest = 0;
  for (const auto& layer : graph.layers)
    if (layer.kind == "lm_head" && layer.dims.vocab > 0)
      widest = std::max(widest, layer.dims.vocab + std::max<std::int64_t>(layer.dims.hidden, 0));
  return widest * static_cast<std::int64_t>(cost::dtype_bytes(graph.dtype));
}

/// Tokens the biggest inference step of `graph` processes: batch x seq of the profiled
/// example (a KV-cached decoder's prefill of the whole example; any other model's one
/// forward), seq capped at graph.max_positions when the model states it.
inline std::int64_t step_tokens(const ModelGraph& graph) {
  std::int64_t seq = std::max<std::int64_t>(graph.seq, 1);
  if (graph.max_positions > 0) seq = std::min(seq, graph.max_positions);
  return std::max<std::int64_t>(graph.batch, 1) * seq;
}

/// The inference activation reservation for `graph` on `hw` with `device_count` replicas. A given
/// `calibration` replaces the Config's safety factor.
inline Reservation activation_reservation(const ModelGraph& graph, const Hardware& hw, const ReservationConfig& config,
                                          std::int64_t device_count,
                                          const std::optional<Calibration>& calibration = std::nullopt) {
  if (device_count < 1)
    throw ConfigError("device_count: got " + std::to_string(device_count) + ", expected at least 1");
  Reservation r;
  r.used = true;
  r.flat_bytes = config.flat_bytes;
  r.safety_factor = calibration ? calibration->safety_factor : config.safety_factor;
  r.calibrated = calibration.has_value();
  r.calibration_samples = calibration ? static_cast<std::int64_t>(calibration->samples) : 0;
  r.widest_buffer = widest_buffer(graph);
  // An explicit prefill_tokens overrides what the graph says (a serving chunk size).
  r.tokens_per_step = config.prefill_tokens > 0 ? config.prefill_tokens : step_tokens(graph);
  r.graph_capture_bytes = hw.gpu_count() > 0 ? config.graph_capture_bytes : 0;
  std::uint64_t core = config.flat_bytes;
  if (r.widest_buffer <= 0) {
    r.source = "flat_fallback";
  } else {
    const double scaled = static_cast<double>(r.widest_buffer) * static_cast<double>(r.tokens_per_step) *
                          static_cast<double>(cost::dtype_bytes(graph.dtype)) * r.safety_factor;
    r.scaled_bytes = scaled >= 1.8e19 ? ~0ull : static_cast<std::uint64_t>(std::ceil(scaled));
    r.source = r.scaled_bytes < config.flat_bytes ? "scaled" : "flat_cap";
    core = std::min(r.scaled_bytes, config.flat_bytes);
    const double head = static_cast<double>(output_head_bytes_per_token(graph)) * static_cast<double>(r.tokens_per_step);
    r.output_head_bytes = head >= 1.8e19 ? ~0ull : static_cast<std::uint64_t>(head);
    if (r.output_head_bytes > core) {
      core = r.output_head_bytes;
      r.source = "output_head";
    }
  }
  r.per_device_bytes = core + r.graph_capture_bytes;
  r.bytes = r.per_device_bytes * static_cast<std::uint64_t>(device_count);
  return r;
}

/// The sample a plan's reservation and a measured activation peak make.
inline ReservationSample reservation_sample(const Reservation& r, const std::string& dtype, std::uint64_t measured_bytes) {
  return {r.widest_buffer, r.tokens_per_step, cost::dtype_bytes(dtype), measured_bytes};
}

/// Fits the safety factor to measured activation peaks. Each sample's ratio is
/// measured / (widest x tokens x dtype bytes); the returned safety_factor is the largest
/// ratio, so the reservation covers every measured step (under-reserving is an OOM, over-
/// reserving only wastes memory); least_squares_factor is the fit through the origin.
inline Calibration calibrate_safety_factor(const std::vector<ReservationSample>& samples) {
  if (samples.empty())
    throw ConfigError("calibration: no samples; give at least one measured activation peak");
  Calibration c;
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const auto& s = samples[i];
    const std::string at = "calibration.samples[" + std::to_string(i) + "]";
    if (s.widest_buffer <= 0) throw ConfigError(at + ".widest_buffer: got " + std::to_string(s.widest_buffer) + ", must be > 0");
    if (s.tokens_per_step <= 0)
      throw ConfigError(at + ".tokens_per_step: got " + std::to_string(s.tokens_per_step) + ", must be > 0");
    if (s.dtype_bytes == 0) throw ConfigError(at + ".dtype_bytes: got 0, must be 1, 2, 4 or 8");
    if (s.measured_bytes == 0) throw ConfigError(at + ".measured_bytes: got 0, a measured activation peak must be > 0");
    const double base = static_cast<double>(s.widest_buffer) * static_cast<double>(s.tokens_per_step) *
                        static_cast<double>(s.dtype_bytes);
    const double measured = static_cast<double>(s.measured_bytes);
    const double ratio = measured / base;
    c.min_ratio = i == 0 ? ratio : std::min(c.min_ratio, ratio);
    c.max_ratio = i == 0 ? ratio : std::max(c.max_ratio, ratio);
    num += measured * base;
    den += base * base;
  }
  c.samples = samples.size();
  c.safety_factor = c.max_ratio;
  c.least_squares_factor = num / den;
  return c;
}

}  // namespace memscale
