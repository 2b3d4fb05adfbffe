// Weight pager: OffloadPolicy, hot set, LayerPager and its torch storage. Every call that
// may wait on the pager's lock or do I/O releases the GIL: the prefetch thread never
// needs it, and its log messages (which do) must not deadlock against a waiting caller.
#include <torch/csrc/utils/pybind.h>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "memscale/core/config.hpp"
#include "memscale/core/pager.hpp"
#include "memscale/core/pager_layout.hpp"
#include "memscale/torch/pager_storage.hpp"

namespace memscale::bindings {

namespace {

/// (name, kind, bytes, home, pinned by the plan)
using LayerSpec = std::tuple<std::string, std::string, std::uint64_t, std::string, bool>;

std::vector<PagedLayer> to_layers(const std::vector<LayerSpec>& specs) {
  std::vector<PagedLayer> layers;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const auto& [name, kind, bytes, home, pinned] = specs[i];
    layers.push_back({name, kind, bytes, weight_tier_from_string(home, "pager layers[" + std::to_string(i) + "].home"), pinned});
  }
  return layers;
}

/// Joining the prefetch thread while holding the GIL could deadlock: the thread may be
/// waiting for the GIL to log. Destroy pagers with the GIL released.
struct ReleaseGilDeleter {
  void operator()(LayerPager* p) const {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      delete p;
    } else {
      delete p;
    }
  }
};
using PagerHolder = std::unique_ptr<LayerPager, ReleaseGilDeleter>;

}  // namespace

void bind_pager(py::module_& m) {
  using release_gil = py::call_guard<py::gil_scoped_release>;

  py::class_<OffloadPolicy>(m, "OffloadPolicy", "Weight residency policy, as Config.offload holds it.")
      .def_static(
          "from_json",
          [](const std::string& text) {
            return config_detail::parse_offload(nlohmann::json::parse(text), "offload");
          },
          py::arg("text"), "Parse the JSON of Config.offload (same validation and messages).")
      .def_property_readonly("policy", [](const OffloadPolicy& p) { return std::string(to_string(p.kind)); })
      .def_readonly("ram_bytes", &OffloadPolicy::ram_bytes)
      .def_readonly("pin_embeddings", &OffloadPolicy::pin_embeddings)
      .def_readonly("pin_output_head", &OffloadPolicy::pin_output_head)
      .def_readonly("pin_last_n_layers", &OffloadPolicy::pin_last_n_layers)
      .def_readonly("prefetch_n_ahead", &OffloadPolicy::prefetch_n_ahead)
      .def_readonly("disk_dir", &OffloadPolicy::disk_dir);

  py::class_<HotSet>(m, "HotSet", "Pinned layers of a policy and the byte figures of its hot set.")
      .def_readonly("pinned", &HotSet::pinned)
      .def_readonly("pinned_bytes", &HotSet::pinned_bytes)
      .def_readonly("embedding_bytes", &HotSet::embedding_bytes)
      .def_readonly("head_bytes", &HotSet::head_bytes)
      .def_readonly("last_layers_bytes", &HotSet::last_layers_bytes)
      .def_readonly("planned_bytes", &HotSet::planned_bytes)
      .def_readonly("largest_unpinned_bytes", &HotSet::largest_unpinned_bytes)
      .def_readonly("largest_unpinned_name", &HotSet::largest_unpinned_name)
      .def_property_readonly("min_ram_bytes", [](const HotSet& h) { return min_ram_bytes(h); });

  m.def(
      "pager_hot_set", [](const std::vector<LayerSpec>& layers, const OffloadPolicy& p) { return hot_set(to_layers(layers), p); },
      py::arg("layers"), py::arg("policy"), "Hot set of (name, kind, bytes, home, pinned) layers under a policy.");
  m.def(
      "validate_pager_layout",
      [](const std::vector<LayerSpec>& layers, const OffloadPolicy& p) { validate_pager_layout(to_layers(layers), p); },
      py::arg("layers"), py::arg("policy"), "ConfigError when the budget cannot serve these layers.");

  py::class_<PagerStats>(m, "PagerStats", "Pager counters; times in seconds.")
      .def_readonly("budget_bytes", &PagerStats::budget_bytes)
      .def_readonly("pinned_bytes", &PagerStats::pinned_bytes)
      .def_readonly("physical_bytes", &PagerStats::physical_bytes)
      .def_readonly("peak_physical_bytes", &PagerStats::peak_physical_bytes)
      .def_readonly("acquires", &PagerStats::acquires)
      .def_readonly("hits", &PagerStats::hits)
      .def_readonly("prefetch_hits", &PagerStats::prefetch_hits)
      .def_readonly("late_prefetches", &PagerStats::late_prefetches)
      .def_readonly("loads", &PagerStats::loads)
      .def_readonly("prefetch_loads", &PagerStats::prefetch_loads)
      .def_readonly("demand_loads", &PagerStats::demand_loads)
      .def_readonly("evictions", &PagerStats::evictions)
      .def_readonly("prefetch_dropped", &PagerStats::prefetch_dropped)
      .def_readonly("load_failures", &PagerStats::load_failures)
      .def_readonly("bytes_loaded", &PagerStats::bytes_loaded)
      .def_readonly("load_seconds", &PagerStats::load_seconds)
      .def_readonly("prefetch_load_seconds", &PagerStats::prefetch_load_seconds)
      .def_readonly("acquire_wait_seconds", &PagerStats::acquire_wait_seconds)
      .def_property_readonly("hidden_fraction", &PagerStats::hidden_fraction);

  py::class_<StorageIoStats>(m, "StorageIoStats", "I/O of a TorchPagerStorage; times in seconds.")
      .def_readonly("bytes_written", &StorageIoStats::bytes_written)
      .def_readonly("bytes_read", &StorageIoStats::bytes_read)
      .def_readonly("files_written", &StorageIoStats::files_written)
      .def_readonly("reads", &StorageIoStats::reads)
      .def_readonly("host_copies", &StorageIoStats::host_copies)
      .def_readonly("write_seconds", &StorageIoStats::write_seconds)
      .def_readonly("read_seconds", &StorageIoStats::read_seconds)
      .def_readonly("host_copy_seconds", &StorageIoStats::host_copy_seconds);

  m.def(
      "check_disk_dir",
      [](const std::string& dir, std::uint64_t required, std::optional<std::uint64_t> free_bytes) {
        const DiskDirCheck c = check_disk_dir(dir, required, free_bytes);
        return py::make_tuple(c.dir, c.free_bytes);
      },
      py::arg("dir"), py::arg("required_bytes"), py::arg("free_bytes") = py::none(),
      "(absolute dir, free bytes) or ConfigError naming offload.disk_dir.");

  py::class_<PagerStorage, std::shared_ptr<PagerStorage>>(m, "PagerStorage", "Base of pager storage backends.");

  py::class_<TorchPagerStorage, PagerStorage, std::shared_ptr<TorchPagerStorage>>(
      m, "TorchPagerStorage", "Moves layers' parameter storages between residency and disk files / pinned host.")
      .def(py::init([](const std::string& dir, const std::string& format, std::size_t io_chunk_bytes, bool drop_page_cache) {
             return std::make_shared<TorchPagerStorage>(DiskTierOptions{dir, format, io_chunk_bytes, drop_page_cache});
           }),
           py::arg("dir"), py::arg("format") = "safetensors", py::arg("io_chunk_bytes") = std::size_t{16} << 20,
           py::arg("drop_page_cache") = true)
      .def(
          "add_layer",
          [](TorchPagerStorage& s, const std::string& name, const std::vector<std::string>& names,
             const std::vector<at::Tensor>& tensors, const std::string& home) {
            return s.add_layer(name, names, tensors, weight_tier_from_string(home, "pager layer \"" + name + "\" home"));
          },
          py::arg("name"), py::arg("tensor_names"), py::arg("tensors"), py::arg("home"))
      .def("layer_bytes", &TorchPagerStorage::layer_bytes, py::arg("layer"))
      .def("disk_bytes_required", &TorchPagerStorage::disk_bytes_required, py::arg("pinned"))
      .def("write_home_copies", &TorchPagerStorage::write_home_copies, py::arg("pinned"), py::arg("free_bytes") = py::none(),
           release_gil())
      .def("store", &TorchPagerStorage::store, py::arg("layer"), release_gil())
      .def("load", &TorchPagerStorage::load, py::arg("layer"), release_gil())
      .def("evict", &TorchPagerStorage::evict, py::arg("layer"), release_gil())
      .def("restore_all", &TorchPagerStorage::restore_all, release_gil())
      .def("remove_files", &TorchPagerStorage::remove_files)
      .def("files", &TorchPagerStorage::files)
      .def("io_stats", &TorchPagerStorage::io_stats)
      .def_property_readonly("dir", [](const TorchPagerStorage& s) { return s.disk_options().dir; })
      .def("__len__", &TorchPagerStorage::size);

  py::class_<LayerPager, PagerHolder>(m, "LayerPager", "LRU weight pager with a background prefetch thread.")
      .def(py::init([](const std::vector<LayerSpec>& layers, const OffloadPolicy& policy, std::shared_ptr<PagerStorage> storage,
                       std::vector<std::size_t> order, bool cyclic, bool initially_resident, bool prefetch_thread) {
             PagerOptions o;
             o.order = std::move(order);
             o.cyclic = cyclic;
             o.initially_resident = initially_resident;
             o.prefetch_thread = prefetch_thread;
             return PagerHolder(new LayerPager(to_layers(layers), policy, std::move(storage), std::move(o)));
           }),
           py::arg("layers"), py::arg("policy"), py::arg("storage"), py::arg("order") = std::vector<std::size_t>{},
           py::arg("cyclic") = true, py::arg("initially_resident") = true, py::arg("prefetch_thread") = true)
      .def("acquire", &LayerPager::acquire, py::arg("layer"), release_gil())
      .def("release", &LayerPager::release, py::arg("layer"), release_gil())
      .def("prefetch", &LayerPager::prefetch, py::arg("layer"), release_gil())
      .def("set_order", &LayerPager::set_order, py::arg("order"), release_gil())
      .def("wait_idle", &LayerPager::wait_idle, release_gil())
      .def("stop", &LayerPager::stop, release_gil())
      .def("stats", &LayerPager::stats, release_gil())
      .def("reset_stats", &LayerPager::reset_stats, release_gil())
      .def("lru_order", &LayerPager::lru_order, release_gil())
      .def("state", [](const LayerPager& p, std::size_t i) { return std::string(to_string(p.state(i))); }, py::arg("layer"),
           release_gil())
      .def("tier", [](const LayerPager& p, std::size_t i) { return std::string(to_string(p.tier(i))); }, py::arg("layer"),
           release_gil())
      .def("pinned", &LayerPager::pinned, py::arg("layer"))
      .def("index_of", &LayerPager::index_of, py::arg("name"))
      .def_property_readonly("budget_bytes", &LayerPager::budget_bytes)
      .def("__len__", &LayerPager::size);
}

}  // namespace memscale::bindings
