#include "bindings.hpp"
#include "memscale/core/version.hpp"

PYBIND11_MODULE(_C, m) {
  using namespace memscale::bindings;
  m.doc() = "MemScale C++ core: config, model graph, hardware, planning engine";
  m.attr("__version__") = memscale::version();
  bind_errors(m);
  bind_logging(m);
  bind_config(m);
  bind_graph(m);
  bind_hardware(m);
  bind_plan(m);
  bind_memory(m);
  bind_pager(m);
  bind_engine(m);
  bind_fit(m);
  bind_serving(m);
}
