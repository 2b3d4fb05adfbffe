// C++ errors become the Python classes defined in memscale/errors.py, so errors raised
// from C++ and from Python code are the same classes.
#include "bindings.hpp"
#include "memscale/core/errors.hpp"

namespace memscale::bindings {

void bind_errors(py::module_&) {
  py::register_exception_translator([](std::exception_ptr pointer) {
    try {
      if (pointer) std::rethrow_exception(pointer);
    } catch (const InfeasibleBudgetError& e) {
      py::object cls = py::module_::import("memscale.errors").attr("InfeasibleBudgetError");
      py::object error = cls(e.what(), e.min_budget_bytes());
      PyErr_SetObject(cls.ptr(), error.ptr());
    } catch (const ConfigError& e) {
      PyErr_SetString(py::module_::import("memscale.errors").attr("ConfigError").ptr(), e.what());
    } catch (const MemScaleError& e) {
      PyErr_SetString(py::module_::import("memscale.errors").attr("MemScaleError").ptr(), e.what());
    }
  });
}

}  // namespace memscale::bindings
