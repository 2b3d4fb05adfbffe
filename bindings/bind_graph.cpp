#include "bindings.hpp"
#include "memscale/core/model_graph.hpp"
#include "memscale/core/position_wise_kinds.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_graph(py::module_& m) {
  m.def("optimizer_kinds", &optimizer_kinds, "Optimizer names a ModelGraph accepts: none, sgd, sgd_momentum, adam, adamw.");
  m.def("optimizer_state_factor", &optimizer_state_factor, py::arg("optimizer"),
        "Optimizer state bytes per trainable parameter byte (adam/adamw 2, sgd_momentum 1, sgd/none 0).\n"
        "Raises ConfigError naming the value and the allowed optimizers for any other name.");
  m.attr("MASTER_WEIGHT_BYTES_PER_ELEMENT") = master_weight_bytes_per_element;
  m.def("optimizer_state_bytes", &optimizer_state_bytes, py::arg("optimizer"), py::arg("trainable_bytes"),
        py::arg("trainable_elements"), py::arg("mixed_precision"),
        "A layer's optimizer_bytes: optimizer_state_factor(optimizer) * trainable_bytes, plus\n"
        "MASTER_WEIGHT_BYTES_PER_ELEMENT * trainable_elements with mixed precision.");
  m.def("position_wise_leaf_kinds", &position_wise_leaf_kinds,
        "Leaf module kinds (class names: 'Linear', 'GELU', 'Dropout', ...) that act on each position\n"
        "independently; a layer made only of them may be chunked over its sequence / batch axis.");
  m.def("feature_axis_kinds", &feature_axis_kinds,
        "Kinds of position_wise_leaf_kinds() with a `dim` option: position-wise only with dim == -1.");
  m.def("random_mask_kinds", &random_mask_kinds,
        "Kinds of position_wise_leaf_kinds() that draw a random mask (Dropout): a layer holding one is\n"
        "position-wise, but tileable only while none draws a mask (eval mode or p == 0).");

  py::class_<Dims>(m, "Dims")
      .def_readonly("hidden", &Dims::hidden)
      .def_readonly("intermediate", &Dims::intermediate)
      .def_readonly("heads", &Dims::heads)
      .def_readonly("vocab", &Dims::vocab)
      .def_readonly("seq", &Dims::seq)
      .def_readonly("batch", &Dims::batch);

  py::class_<Layer>(m, "Layer", "One profiled layer; fields as in docs/json-schema.md.")
      .def_readonly("index", &Layer::index)
      .def_readonly("name", &Layer::name)
      .def_readonly("kind", &Layer::kind)
      .def_readonly("param_bytes", &Layer::param_bytes)
      .def_readonly("buffer_bytes", &Layer::buffer_bytes)
      .def_readonly("grad_bytes", &Layer::grad_bytes)
      .def_readonly("optimizer_bytes", &Layer::optimizer_bytes)
      .def_readonly("activation_bytes", &Layer::activation_bytes)
      .def_readonly("retained_bytes", &Layer::retained_bytes)
      .def_readonly("receives_grad", &Layer::receives_grad)
      .def_readonly("transient_bytes", &Layer::transient_bytes)
      .def_readonly("input_bytes", &Layer::input_bytes)
      .def_readonly("output_bytes", &Layer::output_bytes)
      .def_readonly("kv_cache_bytes", &Layer::kv_cache_bytes)
      .def_readonly("flops", &Layer::flops)
      .def_readonly("dims", &Layer::dims)
      .def_readonly("tileable", &Layer::tileable)
      .def_readonly("measured_peak_bytes", &Layer::measured_peak_bytes)
      .def_readonly("measured_activation_bytes", &Layer::measured_activation_bytes)
      .def_readonly("cannot", &Layer::cannot)
      .def("__repr__", [](const Layer& l) { return "<Layer " + std::to_string(l.index) + " '" + l.name + "' " + l.kind + ">"; });

  py::class_<ModelGraph>(m, "ModelGraph", "Profiled model: layers in execution order (docs/json-schema.md).")
      .def_static(
          "from_json",
          [](const std::string& text_or_path) { return ModelGraph::from_json_text(json_fields::load_json_document(text_or_path)); },
          py::arg("text_or_path"))
      .def("to_json", &ModelGraph::to_json_text)
      .def_readonly("model_name", &ModelGraph::model_name)
      .def_readonly("dtype", &ModelGraph::dtype)
      .def_readonly("batch", &ModelGraph::batch)
      .def_readonly("seq", &ModelGraph::seq)
      .def_readonly("max_positions", &ModelGraph::max_positions)
      .def_readonly("training", &ModelGraph::training)
      .def_readonly("optimizer", &ModelGraph::optimizer)
      .def_readonly("mixed_precision", &ModelGraph::mixed_precision)
      .def_readonly("input_bytes", &ModelGraph::input_bytes)
      .def_readonly("optimizer_offloadable", &ModelGraph::optimizer_offloadable)
      .def_readonly("layers", &ModelGraph::layers)
      .def("__eq__", [](const ModelGraph& a, const ModelGraph& b) { return a == b; }, py::is_operator())
      .def("__repr__", [](const ModelGraph& g) {
        return "<ModelGraph '" + g.model_name + "' layers=" + std::to_string(g.layers.size()) +
               " batch=" + std::to_string(g.batch) + " seq=" + std::to_string(g.seq) + ">";
      });
}

}  // namespace memscale::bindings
