#include "bindings.hpp"
#include "memscale/core/model_graph.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_graph(py::module_& m) {
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
      .def_readonly("training", &ModelGraph::training)
      .def_readonly("optimizer", &ModelGraph::optimizer)
      .def_readonly("mixed_precision", &ModelGraph::mixed_precision)
      .def_readonly("input_bytes", &ModelGraph::input_bytes)
      .def_readonly("layers", &ModelGraph::layers)
      .def("__eq__", [](const ModelGraph& a, const ModelGraph& b) { return a == b; }, py::is_operator())
      .def("__repr__", [](const ModelGraph& g) {
        return "<ModelGraph '" + g.model_name + "' layers=" + std::to_string(g.layers.size()) +
               " batch=" + std::to_string(g.batch) + " seq=" + std::to_string(g.seq) + ">";
      });
}

}  // namespace memscale::bindings
