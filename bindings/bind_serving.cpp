// The serving scheduler's decisions (include/memscale/core/rules/serving.hpp).
#include "bindings.hpp"
#include "memscale/core/rules/serving.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_serving(py::module_& m) {
  using namespace memscale::serving;
  py::class_<ServingModel>(m, "ServingModel", "One model's facts for the serving scheduler's decisions.")
      .def(py::init<>())
      .def_readwrite("kv_bytes_per_token", &ServingModel::kv_bytes_per_token)
      .def_readwrite("layers", &ServingModel::layers)
      .def_readwrite("decode_reservation_per_row", &ServingModel::decode_reservation_per_row)
      .def_readwrite("prefill_reservation_per_token", &ServingModel::prefill_reservation_per_token)
      .def_readwrite("flops_per_token", &ServingModel::flops_per_token)
      .def_readwrite("attention_bytes_per_pair", &ServingModel::attention_bytes_per_pair)
      .def_readwrite("attention_bytes_per_column", &ServingModel::attention_bytes_per_column);
  py::class_<ServingRequest>(m, "ServingRequest", "One request as the serving scheduler holds it.")
      .def(py::init<>())
      .def_readwrite("id", &ServingRequest::id)
      .def_readwrite("model", &ServingRequest::model)
      .def_readwrite("tokens", &ServingRequest::tokens)
      .def_readwrite("prefill_tokens", &ServingRequest::prefill_tokens)
      .def_readwrite("max_tokens", &ServingRequest::max_tokens)
      .def_readwrite("swapped", &ServingRequest::swapped)
      .def_readwrite("dropped", &ServingRequest::dropped);
  py::class_<ServingState>(m, "ServingState", "Everything one serving decision looks at.")
      .def(py::init<>())
      .def_readwrite("budget_bytes", &ServingState::budget_bytes)
      .def_readwrite("weight_bytes", &ServingState::weight_bytes)
      .def_readwrite("projection", &ServingState::projection)
      .def_readwrite("max_batch", &ServingState::max_batch)
      .def_readwrite("models", &ServingState::models)
      .def_readwrite("running", &ServingState::running)
      .def_readwrite("queued", &ServingState::queued);
  py::class_<ServingAction>(m, "ServingAction", "One action before an iteration, with its rule id and reason.")
      .def_readonly("action", &ServingAction::action)
      .def_readonly("id", &ServingAction::id)
      .def_readonly("rule", &ServingAction::rule)
      .def_readonly("reason", &ServingAction::reason)
      .def_readonly("projected_bytes", &ServingAction::projected_bytes);
  py::class_<ServingDecision>(m, "ServingDecision", "The actions of one iteration and its projected peak.")
      .def_readonly("actions", &ServingDecision::actions)
      .def_readonly("projected_bytes", &ServingDecision::projected_bytes);
  m.def("serving_decide", &decide_iteration, py::arg("state"), py::arg("hardware"),
        "Preemptions, resumptions and admissions before one decode iteration.");
  m.def("serving_alone_bytes", &alone_bytes, py::arg("state"), py::arg("request"),
        "Projected peak of the request running alone at its maximum length.");
}

}  // namespace memscale::bindings
