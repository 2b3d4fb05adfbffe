#include "bindings.hpp"
#include "memscale/core/plan.hpp"
#include "memscale/core/plan_summary.hpp"
#include "memscale/core/sizes.hpp"
#include "memscale/core/tier_policy.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_plan(py::module_& m) {
  py::class_<LayerBytes>(m, "LayerBytes", "A layer's device bytes by kind.")
      .def_readonly("weights", &LayerBytes::weights)
      .def_readonly("grads", &LayerBytes::grads)
      .def_readonly("optimizer", &LayerBytes::optimizer)
      .def_readonly("activations", &LayerBytes::activations)
      .def_readonly("kv_cache", &LayerBytes::kv_cache);

  py::class_<LayerPlan>(m, "LayerPlan", "Techniques and predicted bytes of one layer.")
      .def_readonly("before", &LayerPlan::before)
      .def_readonly("after", &LayerPlan::after)
      .def_readonly("index", &LayerPlan::index)
      .def_readonly("name", &LayerPlan::name)
      .def_readonly("kind", &LayerPlan::kind)
      .def_readonly("techniques", &LayerPlan::techniques)
      .def_readonly("tile_chunks", &LayerPlan::tile_chunks)
      .def_readonly("weight_tier", &LayerPlan::weight_tier)
      .def_readonly("activation_tier", &LayerPlan::activation_tier)
      .def_readonly("kv_tier", &LayerPlan::kv_tier)
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

  const auto split_dict = [](const TierSplit& s) {
    py::dict d;
    d["gpu"] = s.gpu, d["cpu"] = s.cpu, d["disk"] = s.disk();
    return d;
  };
  const auto splits_of = [](const py::handle& value, const std::string& path) {
    return parse_tier_splits(json_of(value, path), path);
  };
  py::class_<TierSplit>(m, "TierSplit", "Share of one tensor type per tier, in percent (disk = 100 - gpu - cpu).")
      .def(py::init([](double gpu, double cpu) { return TierSplit{gpu, cpu}; }), py::arg("gpu") = 100.0, py::arg("cpu") = 0.0)
      .def_static(
          "from_dict", [](const py::object& value, const std::string& path) { return parse_tier_split(json_of(value, path), path); },
          py::arg("value"), py::arg("path") = "tiers",
          "Parse {'gpu': %, 'cpu': %[, 'disk': %]} (gpu defaults to 100, cpu to 0; a given disk must equal\n"
          "100 - gpu - cpu). Raises ConfigError naming `path`, the key, the value and what is allowed.")
      .def_static(
          "from_json", &tier_split_from_json_text,
          py::arg("text"), py::arg("path") = "tiers", "TierSplit.from_dict of a JSON text.")
      .def_readonly("gpu", &TierSplit::gpu)
      .def_readonly("cpu", &TierSplit::cpu)
      .def_property_readonly("disk", &TierSplit::disk)
      .def("to_dict", split_dict, "{'gpu': %, 'cpu': %, 'disk': %}; TierSplit.from_dict reads it back.")
      .def("__eq__", [](const TierSplit& a, const TierSplit& b) { return a == b; }, py::is_operator())
      .def("__hash__", [](const TierSplit& s) { return py::hash(py::make_tuple(s.gpu, s.cpu)); })
      .def("__repr__", [](const TierSplit& s) {
        return "TierSplit(gpu=" + json_fields::format_number(s.gpu) + ", cpu=" + json_fields::format_number(s.cpu) + ")";
      });

  m.def("tier_tensor_types", &tier_tensor_type_names, "The tensor types a tier policy places: weights, kv_cache, activations.");
  m.def("parse_tier_splits", splits_of, py::arg("value"), py::arg("path") = "tiers",
        "Parse {tensor type: split} (only the types given come back) with TierSplit.from_dict's rule;\n"
        "an unknown tensor type is a ConfigError listing weights, kv_cache, activations.");

  m.def("split_layer_tiers", &split_layer_tiers, py::arg("n_layers"), py::arg("split"), py::arg("gpu"),
        "Tier of each of n_layers layers under one tensor type's split, by position: the first gpu% on the\n"
        "device, the next cpu% on the host (\"device\" without a GPU), the rest on disk.");
  m.def(
      "check_inference_activation_tiers",
      [splits_of](const py::object& value, const std::string& path) {
        check_inference_activation_tiers(splits_of(value, path), path);
      },
      py::arg("value"), py::arg("path") = "tiers",
      "ConfigError when {tensor type: split} puts inference activations off the device (gpu < 100):\n"
      "the model's own forward holds them between its layers.");

  py::class_<TierPolicy>(m, "TierPolicy", "Immutable placement of weights, KV cache and activations.")
      .def(py::init([](const TierSplit& w, const TierSplit& k, const TierSplit& a) { return TierPolicy{w, k, a}; }),
           py::arg("weights") = TierSplit{}, py::arg("kv_cache") = TierSplit{}, py::arg("activations") = TierSplit{})
      .def_static(
          "from_dict",
          [splits_of](const py::object& value, const std::string& path) {
            TierPolicy p;
            for (const auto& [type, split] : splits_of(value, path))
              (type == "weights" ? p.weights : type == "kv_cache" ? p.kv_cache : p.activations) = split;
            return p;
          },
          py::arg("value"), py::arg("path") = "tiers",
          "A policy from {tensor type: split}; types not given stay all on the GPU (100/0/0).")
      .def_readonly("weights", &TierPolicy::weights)
      .def_readonly("kv_cache", &TierPolicy::kv_cache)
      .def_readonly("activations", &TierPolicy::activations)
      .def("to_dict",
           [split_dict](const TierPolicy& p) {
             py::dict d;
             d["weights"] = split_dict(p.weights), d["kv_cache"] = split_dict(p.kv_cache),
             d["activations"] = split_dict(p.activations);
             return d;
           },
           "{tensor type: {'gpu': %, 'cpu': %, 'disk': %}}; TierPolicy.from_dict reads it back.")
      .def("__eq__", [](const TierPolicy& a, const TierPolicy& b) { return a == b; }, py::is_operator())
      .def("__hash__", [](const TierPolicy& p) {
        return py::hash(py::make_tuple(p.weights.gpu, p.weights.cpu, p.kv_cache.gpu, p.kv_cache.cpu, p.activations.gpu,
                                       p.activations.cpu));
      })
      .def("__repr__", [](const TierPolicy& p) {
        const auto s = [](const TierSplit& x) {
          return "TierSplit(gpu=" + json_fields::format_number(x.gpu) + ", cpu=" + json_fields::format_number(x.cpu) + ")";
        };
        return "TierPolicy(weights=" + s(p.weights) + ", kv_cache=" + s(p.kv_cache) + ", activations=" + s(p.activations) + ")";
      });

  py::class_<Reservation>(m, "Reservation", "Inference activation reservation (sized from model dims, calibrated) with its inputs.")
      .def_readonly("used", &Reservation::used)
      .def_readonly("bytes", &Reservation::bytes)
      .def_readonly("per_device_bytes", &Reservation::per_device_bytes)
      .def_readonly("scaled_bytes", &Reservation::scaled_bytes)
      .def_readonly("output_head_bytes", &Reservation::output_head_bytes,
                    "The output head's logits for the step's tokens plus its input; the reservation is at least this.")
      .def_readonly("flat_bytes", &Reservation::flat_bytes)
      .def_readonly("graph_capture_bytes", &Reservation::graph_capture_bytes)
      .def_readonly("tokens_per_step", &Reservation::tokens_per_step)
      .def_readonly("widest_buffer", &Reservation::widest_buffer)
      .def_readonly("safety_factor", &Reservation::safety_factor)
      .def_readonly("calibrated", &Reservation::calibrated)
      .def_readonly("calibration_samples", &Reservation::calibration_samples)
      .def_readonly("source", &Reservation::source);

  py::class_<TierChoice>(m, "TierChoice", "The tier split an inference plan realises, with its cost (seconds per step).")
      .def_readonly("used", &TierChoice::used)
      .def_readonly("policy", &TierChoice::policy)
      .def_readonly("compute_s", &TierChoice::compute_s)
      .def_readonly("io_s", &TierChoice::io_s)
      .def_readonly("total_s", &TierChoice::total_s)
      .def_readonly("gpu_bytes", &TierChoice::gpu_bytes)
      .def_readonly("cpu_bytes", &TierChoice::cpu_bytes)
      .def_readonly("disk_bytes", &TierChoice::disk_bytes);

  py::class_<OffloadPlan>(m, "OffloadPlan", "Weight residency policy for the pager (none, budget, pinned_hot_set).")
      .def_readonly("policy", &OffloadPlan::policy)
      .def_readonly("ram_bytes", &OffloadPlan::ram_bytes)
      .def_readonly("hot_set", &OffloadPlan::hot_set)
      .def_readonly("prefetch_n_ahead", &OffloadPlan::prefetch_n_ahead)
      .def_readonly("predicted_resident_bytes", &OffloadPlan::predicted_resident_bytes,
                    "Peak bytes the pager will hold resident (its peak_physical_bytes), replayed on the plan; "
                    "what the plan's predicted peak charges for the weights. 0 when nothing is paged.");

  py::class_<OptimizerOffloadPlan>(m, "OptimizerOffloadPlan",
                                   "What a training step keeps on the next tier (rules/optimizer_offload.hpp).")
      .def_readonly("kinds", &OptimizerOffloadPlan::kinds, "\"\" (nothing), \"state\" or \"state+gradients\"")
      .def_readonly("tier", &OptimizerOffloadPlan::tier)
      .def_readonly("moved_bytes", &OptimizerOffloadPlan::moved_bytes)
      .def_readonly("window_bytes", &OptimizerOffloadPlan::window_bytes)
      .def_readonly("rule", &OptimizerOffloadPlan::rule)
      .def_readonly("reason", &OptimizerOffloadPlan::reason);

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
      .def_readonly("reservation", &Plan::reservation)
      .def_readonly("tier_policy", &Plan::tier_policy)
      .def_readonly("offload", &Plan::offload)
      .def_readonly("optimizer_offload", &Plan::optimizer_offload)
      .def("summary", &plan_summary, "Table of layers (techniques, bytes before -> after) and the totals.")
      .def("__eq__", [](const Plan& a, const Plan& b) { return a == b; }, py::is_operator())
      .def("__repr__", [](const Plan& p) {
        return "<Plan layers=" + std::to_string(p.layers.size()) + " budget=" + format_bytes(p.budget_bytes) +
               " predicted_peak=" + format_bytes(p.predicted_peak_bytes) + (p.skipped ? " skipped" : "") + ">";
      });
}

}  // namespace memscale::bindings
