// spdlog messages reach Python's logging: Python installs a callback taking
// (level, message); it is called with the GIL held.
#include "bindings.hpp"
#include "memscale/core/log.hpp"

namespace memscale::bindings {

void bind_logging(py::module_& m) {
  m.def(
      "_set_log_sink",
      [](py::object callback) {
        if (callback.is_none()) {
          log::set_sink({});
          return;
        }
        auto shared = std::make_shared<py::object>(std::move(callback));
        log::set_sink([shared](log::Level level, const std::string& message) {
          if (!Py_IsInitialized()) return;
          py::gil_scoped_acquire gil;
          try {
            (*shared)(static_cast<int>(level), message);
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("memscale log sink");
          }
        });
      },
      py::arg("callback"), "Route C++ log messages to callback(level: int, message: str); None restores stderr.");
  m.def(
      "_set_log_level", [](int level) { log::set_level(log::level_from_python(level)); }, py::arg("level"),
      "Lowest Python logging level forwarded from C++.");
  m.def(
      "_log", [](int level, const std::string& message) { log::emit(log::level_from_python(level), message); },
      py::arg("level"), py::arg("message"), "Emit a message through the C++ logger (tests of the bridge use it).");
}

}  // namespace memscale::bindings
