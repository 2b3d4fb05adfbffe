// The fit advisor's core: graph scaling along batch/seq, the fit search and the smallest
// budget of a graph (include/memscale/core/fit.hpp). Searching releases the GIL.
#include "bindings.hpp"
#include "memscale/core/fit.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_fit(py::module_& m) {
  m.def("fit_dimensions", &fit_dimensions, "Dimensions a fit varies: batch, seq.");

  py::class_<GraphScaling>(m, "GraphScaling",
                           "Profiles of one model at 2 or 3 sizes of batch or seq, and the graph at any size.")
      .def(py::init<std::vector<ModelGraph>, std::vector<std::int64_t>, std::string>(), py::arg("graphs"),
           py::arg("sizes"), py::arg("dim"))
      .def_property_readonly("dim", &GraphScaling::dim)
      .def_property_readonly("sizes", &GraphScaling::sizes)
      .def_property_readonly("graphs", &GraphScaling::graphs)
      .def_property_readonly("any_quadratic", &GraphScaling::any_quadratic)
      .def("at", &GraphScaling::at, py::arg("size"), "The scaled graph at size.");

  py::class_<FitProbe>(m, "FitProbe", "One size the fit search asked the engine about.")
      .def_readonly("size", &FitProbe::size)
      .def_readonly("fits", &FitProbe::fits)
      .def_readonly("predicted_peak_bytes", &FitProbe::predicted_peak_bytes);

  py::class_<FitSearchResult>(m, "FitSearchResult", "The largest size that fits and its plan.")
      .def_readonly("dim", &FitSearchResult::dim)
      .def_readonly("size", &FitSearchResult::size)
      .def_readonly("capped", &FitSearchResult::capped)
      .def_readonly("plan", &FitSearchResult::plan)
      .def_readonly("probes", &FitSearchResult::probes);

  m.def(
      "fit_search",
      [](const GraphScaling& scaling, const Config& config, const Hardware& hardware, std::int64_t min_size,
         std::int64_t max_size) { return fit_search(scaling, hardware, config, FitBounds{min_size, max_size}); },
      py::arg("scaling"), py::arg("config"), py::arg("hardware"), py::arg("min_size"), py::arg("max_size"),
      py::call_guard<py::gil_scoped_release>(),
      "The largest size in [min_size, max_size] whose scaled graph the engine plans within the budget.");
  m.def(
      "min_budget_bytes",
      [](const ModelGraph& graph, const Config& config, const Hardware& hardware) {
        return min_budget_bytes(graph, hardware, config);
      },
      py::arg("graph"), py::arg("config"), py::arg("hardware"), py::call_guard<py::gil_scoped_release>(),
      "The smallest budget with a plan of graph under config's other keys.");
}

}  // namespace memscale::bindings
