// One bind_* function per topic; module.cpp calls them all. Bindings hold no logic:
// they expose core and torch-layer functions as they are.
#pragma once

#include <pybind11/pybind11.h>

namespace memscale::bindings {

namespace py = pybind11;

void bind_errors(py::module_& m);
void bind_logging(py::module_& m);
void bind_config(py::module_& m);
void bind_graph(py::module_& m);
void bind_hardware(py::module_& m);
void bind_plan(py::module_& m);
void bind_memory(py::module_& m);
void bind_pager(py::module_& m);
void bind_engine(py::module_& m);

}  // namespace memscale::bindings
