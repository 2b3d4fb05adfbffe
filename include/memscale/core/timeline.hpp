// The predicted memory timeline of a training step, before and after a plan: the bytes the
// memory model (memory_model.hpp, visit_training_step) predicts at each layer's forward,
// each layer's backward (reverse order) and the optimizer step. Its maxima are the plan's
// unoptimized and predicted peaks. For reports: the engine never calls it while it plans.
//
//   memscale::PlanTimeline t = memscale::plan_timeline(graph, hardware, config, plan);
//   // t.points[i].label ("forward h.0"), .phase, .before_bytes, .after_bytes
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "memscale/core/config.hpp"
#include "memscale/core/engine/plan_states.hpp"
#include "memscale/core/engine/setup.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/memory_model.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale {

/// One position of the step.
struct TimelinePoint {
  std::string label;   ///< "forward <layer>", "backward <layer>" or "optimizer step"
  std::string phase;   ///< forward|backward|optimizer_step
  std::int64_t layer = -1;  ///< graph layer index; -1 for the optimizer step
  std::uint64_t before_bytes = 0;  ///< predicted without any technique
  std::uint64_t after_bytes = 0;   ///< predicted under the plan
};

struct PlanTimeline {
  std::vector<TimelinePoint> points;  ///< execution order
  std::uint64_t budget_bytes = 0, unoptimized_peak_bytes = 0, predicted_peak_bytes = 0;
};

/// The timeline of `plan`, a training plan of `graph` made on `hardware` under `config`.
/// Throws MemScaleError for an inference plan, a plan of another graph, or inputs that do
/// not reproduce the plan's peaks (another hardware or Config than the plan was made with).
inline PlanTimeline plan_timeline(const ModelGraph& graph, const Hardware& hardware, const Config& config,
                                  const Plan& plan) {
  if (!graph.training || !plan.training)
    throw MemScaleError("plan_timeline: the timeline is of a training step; got an inference " +
                        std::string(graph.training ? "plan" : "graph"));
  if (plan.layers.size() != graph.layers.size())
    throw MemScaleError("plan_timeline: the plan has " + std::to_string(plan.layers.size()) + " layers, the graph " +
                        std::to_string(graph.layers.size()) + "; give the graph the plan was made from");
  const engine_detail::Setup setup = engine_detail::make_setup(graph, hardware, config, {});
  const auto before = model::training_timeline(graph, std::vector<model::LayerState>(graph.layers.size()), setup.step);
  const auto after = model::training_timeline(graph, engine_detail::plan_states(plan), setup.step);
  PlanTimeline t;
  t.budget_bytes = plan.budget_bytes;
  t.unoptimized_peak_bytes = plan.unoptimized_peak_bytes;
  t.predicted_peak_bytes = plan.predicted_peak_bytes;
  std::uint64_t max_before = 0, max_after = 0;
  for (std::size_t i = 0; i < after.size(); ++i) {
    TimelinePoint p;
    p.phase = after[i].phase;
    p.layer = after[i].layer;
    p.label = p.layer < 0 ? "optimizer step"
                          : p.phase + " " + graph.layers[static_cast<std::size_t>(p.layer)].name;
    p.before_bytes = model::u64(before[i].bytes);
    p.after_bytes = model::u64(after[i].bytes);
    max_before = std::max(max_before, p.before_bytes);
    max_after = std::max(max_after, p.after_bytes);
    t.points.push_back(std::move(p));
  }
  if (max_before != plan.unoptimized_peak_bytes || max_after != plan.predicted_peak_bytes)
    throw MemScaleError("plan_timeline: these inputs predict peaks of " + format_bytes(max_before) + " unoptimized and " +
                        format_bytes(max_after) + " under the plan, the plan states " +
                        format_bytes(plan.unoptimized_peak_bytes) + " and " + format_bytes(plan.predicted_peak_bytes) +
                        "; give the graph, hardware and Config the plan was made with");
  return t;
}

}  // namespace memscale
