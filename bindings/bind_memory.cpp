#include "bindings.hpp"
#include "memscale/torch/counting_allocator.hpp"

namespace memscale::bindings {

void bind_memory(py::module_& m) {
  using memory::AllocationStats;
  using memory::CountingSession;
  py::class_<AllocationStats>(m, "AllocationStats", "Bytes counted by a CountingSession, relative to its start.")
      .def_readonly("current_bytes", &AllocationStats::current_bytes)
      .def_readonly("peak_bytes", &AllocationStats::peak_bytes)
      .def_readonly("allocations", &AllocationStats::allocations)
      .def_readonly("frees", &AllocationStats::frees);

  py::class_<CountingSession>(m, "CountingSession",
                              "Exact CPU allocation counting (c10 allocator wrapper); sessions nest.")
      .def(py::init<>())
      .def("stats", &CountingSession::stats)
      .def("reset_peak", &CountingSession::reset_peak)
      .def("close", &CountingSession::close)
      .def_property_readonly("closed", &CountingSession::closed);

  m.def("counting_allocator_installed", &memory::counting_allocator_installed,
        "Whether the counting allocator is the CPU allocator now.");
}

}  // namespace memscale::bindings
