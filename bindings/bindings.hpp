// One bind_* function per topic; module.cpp calls them all. Bindings hold no logic:
// they expose core and torch-layer functions as they are.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace memscale::bindings {

namespace py = pybind11;

/// A Python value (None, bool, int, float, str, a mapping with str keys, a list or
/// tuple) as JSON, so core parsers that take JSON read Python dicts too. Any other type
/// is a TypeError naming `path` and the type.
inline nlohmann::json json_of(py::handle value, const std::string& path) {
  if (value.is_none()) return nullptr;
  if (py::isinstance<py::bool_>(value)) return value.cast<bool>();
  if (py::isinstance<py::int_>(value)) {
    try {
      return value.cast<std::int64_t>();
    } catch (const py::cast_error&) {
      return value.cast<double>();
    }
  }
  if (py::isinstance<py::float_>(value)) return value.cast<double>();
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  if (py::isinstance(value, py::module_::import("collections.abc").attr("Mapping"))) {
    nlohmann::json out = nlohmann::json::object();
    for (auto item : py::reinterpret_borrow<py::object>(value).attr("items")()) {
      const auto pair = item.cast<py::tuple>();
      if (!py::isinstance<py::str>(pair[0]))
        throw py::type_error(path + ": keys must be str, got " + py::repr(pair[0]).cast<std::string>());
      const auto key = pair[0].cast<std::string>();
      out[key] = json_of(pair[1], path + "." + key);
    }
    return out;
  }
  if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
    nlohmann::json out = nlohmann::json::array();
    std::size_t i = 0;
    for (auto item : value) out.push_back(json_of(item, path + "[" + std::to_string(i++) + "]"));
    return out;
  }
  throw py::type_error(path + ": got " + py::repr(value).cast<std::string>() + " of type " +
                       py::str(py::type::of(value).attr("__name__")).cast<std::string>() +
                       ", expected a JSON value (None, bool, int, float, str, dict, list)");
}

void bind_errors(py::module_& m);
void bind_logging(py::module_& m);
void bind_config(py::module_& m);
void bind_graph(py::module_& m);
void bind_hardware(py::module_& m);
void bind_plan(py::module_& m);
void bind_memory(py::module_& m);
void bind_pager(py::module_& m);
void bind_engine(py::module_& m);
void bind_fit(py::module_& m);
void bind_serving(py::module_& m);

}  // namespace memscale::bindings
