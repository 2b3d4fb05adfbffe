#include "bindings.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/sizes.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_hardware(py::module_& m) {
  py::class_<Device>(m, "Device")
      .def_readonly("kind", &Device::kind)
      .def_readonly("index", &Device::index)
      .def_readonly("name", &Device::name)
      .def_readonly("total_bytes", &Device::total_bytes)
      .def_readonly("free_bytes", &Device::free_bytes)
      .def_readonly("workspace_bytes", &Device::workspace_bytes)
      .def("__repr__", [](const Device& d) { return "<Device " + d.kind + ":" + std::to_string(d.index) + " " + d.name + ">"; });

  py::class_<Hardware>(m, "Hardware", "The machine a plan is made for (docs/json-schema.md).")
      .def_static(
          "from_json",
          [](const std::string& text_or_path) { return Hardware::from_json_text(json_fields::load_json_document(text_or_path)); },
          py::arg("text_or_path"))
      .def("to_json", &Hardware::to_json_text)
      .def_readonly("devices", &Hardware::devices)
      .def_readonly("host_total_bytes", &Hardware::host_total_bytes)
      .def_readonly("host_available_bytes", &Hardware::host_available_bytes)
      .def_readonly("pinned_limit_bytes", &Hardware::pinned_limit_bytes)
      .def_readonly("offload_dir", &Hardware::offload_dir)
      .def_readonly("offload_dir_free_bytes", &Hardware::offload_dir_free_bytes)
      .def_readonly("disk_read_bytes_per_s", &Hardware::disk_read_bytes_per_s)
      .def_readonly("disk_write_bytes_per_s", &Hardware::disk_write_bytes_per_s)
      .def_readonly("host_to_device_bytes_per_s", &Hardware::host_to_device_bytes_per_s)
      .def_readonly("flops_per_s", &Hardware::flops_per_s)
      .def_property_readonly("gpu_count", &Hardware::gpu_count)
      .def_property_readonly("planning_device_bytes", &Hardware::planning_device_bytes)
      .def("__eq__", [](const Hardware& a, const Hardware& b) { return a == b; }, py::is_operator())
      .def("__repr__", [](const Hardware& h) {
        return "<Hardware gpus=" + std::to_string(h.gpu_count()) + " planning_device=" + format_bytes(h.planning_device_bytes()) + ">";
      });
}

}  // namespace memscale::bindings
