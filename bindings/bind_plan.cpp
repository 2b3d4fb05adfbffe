#include "bindings.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/sizes.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_plan(py::module_& m) {
  py::class_<LayerPlan>(m, "LayerPlan", "Techniques and predicted bytes of one layer.")
      .def_readonly("index", &LayerPlan::index)
      .def_readonly("name", &LayerPlan::name)
      .def_readonly("kind", &LayerPlan::kind)
      .def_readonly("techniques", &LayerPlan::techniques)
      .def_readonly("tile_chunks", &LayerPlan::tile_chunks)
      .def_readonly("weight_tier", &LayerPlan::weight_tier)
      .def_readonly("activation_tier", &LayerPlan::activation_tier)
      .def_readonly("pinned", &LayerPlan::pinned)
      .def_readonly("bytes_before", &LayerPlan::bytes_before)
      .def_readonly("bytes_after", &LayerPlan::bytes_after)
      .def_readonly("rules", &LayerPlan::rules)
      .def_readonly("reasons", &LayerPlan::reasons)
      .def("has", &LayerPlan::has, py::arg("technique"))
      .def("__repr__", [](const LayerPlan& l) {
        std::string t;
        for (const auto& x : l.techniques) t += (t.empty() ? "" : ",") + x;
        return "<LayerPlan " + std::to_string(l.index) + " '" + l.name + "' [" + t + "]>";
      });

  py::class_<Rejection>(m, "Rejection")
      .def_readonly("layer", &Rejection::layer)
      .def_readonly("technique", &Rejection::technique)
      .def_readonly("rule", &Rejection::rule)
      .def_readonly("reason", &Rejection::reason);

  py::class_<Plan>(m, "Plan", "Per-layer execution plan (docs/json-schema.md).")
      .def_static(
          "from_json", [](const std::string& text_or_path) { return Plan::from_json_text(json_fields::load_json_document(text_or_path)); },
          py::arg("text_or_path"))
      .def("to_json", &Plan::to_json_text)
      .def_readonly("mode", &Plan::mode)
      .def_readonly("training", &Plan::training)
      .def_readonly("budget_bytes", &Plan::budget_bytes)
      .def_readonly("device_count", &Plan::device_count)
      .def_readonly("unoptimized_peak_bytes", &Plan::unoptimized_peak_bytes)
      .def_readonly("predicted_peak_bytes", &Plan::predicted_peak_bytes)
      .def_readonly("pressure", &Plan::pressure)
      .def_readonly("skipped", &Plan::skipped)
      .def_readonly("skip_reason", &Plan::skip_reason)
      .def_readonly("layers", &Plan::layers)
      .def_readonly("rejected", &Plan::rejected)
      .def_readonly("trace", &Plan::trace)
      .def("__eq__", [](const Plan& a, const Plan& b) { return a == b; }, py::is_operator())
      .def("__repr__", [](const Plan& p) {
        return "<Plan layers=" + std::to_string(p.layers.size()) + " budget=" + format_bytes(p.budget_bytes) +
               " predicted_peak=" + format_bytes(p.predicted_peak_bytes) + (p.skipped ? " skipped" : "") + ">";
      });
}

}  // namespace memscale::bindings
