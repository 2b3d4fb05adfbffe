#include "bindings.hpp"
#include "memscale/core/config.hpp"
#include "memscale/core/config_schema.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale::bindings {

void bind_config(py::module_& m) {
  m.def("format_bytes", &format_bytes, py::arg("bytes"), "Bytes in binary units for people: 1.50 GiB.");
  m.def("parse_size", &parse_size, py::arg("text"), py::arg("path") = "size",
        "Bytes of a size string such as \"6GiB\" or \"512MB\"; ConfigError names `path` when invalid.");
  m.def("config_schema_json", [] { return config_schema().dump(); },
        "The Config schema (JSON Schema with x- annotations) as JSON text, keys in declared order.");
  m.def("config_example_json", [] { return config_example().dump(); },
        "A Config as JSON text giving every schema key its first example.");
  py::class_<Config>(m, "Config", "Validated, immutable configuration (memscale.Config wraps it).")
      .def_static(
          "from_json", [](const std::string& text_or_path) { return Config::from_json_text(json_fields::load_json_document(text_or_path)); },
          py::arg("text_or_path"))
      .def("to_json", &Config::to_json_text)
      .def("resolve_budget", &Config::resolve_budget, py::arg("device_bytes"),
           "Budget in bytes for a device with `device_bytes` of memory.")
      .def("__eq__", [](const Config& a, const Config& b) { return a == b; }, py::is_operator());
}

}  // namespace memscale::bindings
