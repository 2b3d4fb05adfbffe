// The decision engine: plan(), the inference activation reservation and its calibration,
// the tier-policy search. Planning releases the GIL.
#include "bindings.hpp"
#include "memscale/core/engine.hpp"
#include "memscale/core/timeline.hpp"

#include <pybind11/stl.h>

namespace memscale::bindings {

void bind_engine(py::module_& m) {
  py::class_<Calibration>(m, "Calibration", "A reservation safety factor fitted to measured peaks.")
      .def_readonly("safety_factor", &Calibration::safety_factor)
      .def_readonly("least_squares_factor", &Calibration::least_squares_factor)
      .def_readonly("min_ratio", &Calibration::min_ratio)
      .def_readonly("max_ratio", &Calibration::max_ratio)
      .def_readonly("samples", &Calibration::samples)
      .def("__repr__", [](const Calibration& c) {
        return "Calibration(safety_factor=" + json_fields::format_number(c.safety_factor) +
               ", samples=" + std::to_string(c.samples) + ")";
      });

  py::class_<ReservationSample>(m, "ReservationSample", "A measured inference activation peak with its formula inputs.")
      .def(py::init([](std::int64_t widest, std::int64_t tokens, std::uint64_t dtype_bytes, std::uint64_t measured) {
             return ReservationSample{widest, tokens, dtype_bytes, measured};
           }),
           py::arg("widest_buffer"), py::arg("tokens_per_step"), py::arg("dtype_bytes"), py::arg("measured_bytes"))
      .def_readonly("widest_buffer", &ReservationSample::widest_buffer)
      .def_readonly("tokens_per_step", &ReservationSample::tokens_per_step)
      .def_readonly("dtype_bytes", &ReservationSample::dtype_bytes)
      .def_readonly("measured_bytes", &ReservationSample::measured_bytes);

  m.def("calibrate_safety_factor", &calibrate_safety_factor, py::arg("samples"),
        "Fits the reservation safety factor to measured activation peaks (docs/memory-model.md).");
  m.def("reservation_sample", &reservation_sample, py::arg("reservation"), py::arg("dtype"), py::arg("measured_bytes"),
        "The sample a plan's reservation and a measured activation peak make.");
  m.def(
      "activation_reservation",
      [](const ModelGraph& g, const Hardware& hw, const Config& c, std::optional<std::int64_t> devices) {
        return activation_reservation(g, hw, c.reservation,
                                      devices.value_or(std::max<std::int64_t>(1, static_cast<std::int64_t>(hw.gpu_count()))));
      },
      py::arg("graph"), py::arg("hardware"), py::arg("config"), py::arg("device_count") = py::none(),
      "The inference activation reservation of graph on hardware.");

  py::class_<TierProblem>(m, "TierProblem", "Inputs of the tier-policy search (sizes in bytes, rates in bytes/s).")
      .def(py::init([](std::uint64_t w, std::uint64_t kv, std::uint64_t act, std::uint64_t gpu, std::uint64_t cpu,
                       std::uint64_t disk, double compute_s, std::uint64_t kv_append, double h2d, double read, double write,
                       std::map<std::string, TierSplit> fixed, int step) {
             TierProblem p;
             p.weights_bytes = w, p.kv_cache_bytes = kv, p.activation_bytes = act;
             p.gpu_capacity = gpu, p.cpu_capacity = cpu, p.disk_capacity = disk;
             p.compute_s = compute_s, p.kv_append_bytes = kv_append;
             p.host_to_device_bytes_per_s = h2d, p.disk_read_bytes_per_s = read, p.disk_write_bytes_per_s = write;
             p.fixed = std::move(fixed), p.step_percent = step;
             validate_tier_problem(p);
             return p;
           }),
           py::kw_only(), py::arg("weights_bytes"), py::arg("kv_cache_bytes"), py::arg("activation_bytes"),
           py::arg("gpu_capacity"), py::arg("cpu_capacity"), py::arg("disk_capacity"), py::arg("compute_s") = 0.0,
           py::arg("kv_append_bytes") = 0, py::arg("host_to_device_bytes_per_s") = cost::kDefaultHostToDeviceBytesPerS,
           py::arg("disk_read_bytes_per_s") = cost::kDefaultDiskReadBytesPerS,
           py::arg("disk_write_bytes_per_s") = cost::kDefaultDiskWriteBytesPerS,
           py::arg("fixed") = std::map<std::string, TierSplit>{}, py::arg("step_percent") = 5)
      .def_readonly("weights_bytes", &TierProblem::weights_bytes)
      .def_readonly("kv_cache_bytes", &TierProblem::kv_cache_bytes)
      .def_readonly("activation_bytes", &TierProblem::activation_bytes)
      .def_readonly("kv_append_bytes", &TierProblem::kv_append_bytes)
      .def_readonly("gpu_capacity", &TierProblem::gpu_capacity)
      .def_readonly("cpu_capacity", &TierProblem::cpu_capacity)
      .def_readonly("disk_capacity", &TierProblem::disk_capacity)
      .def_readonly("host_to_device_bytes_per_s", &TierProblem::host_to_device_bytes_per_s)
      .def_readonly("disk_read_bytes_per_s", &TierProblem::disk_read_bytes_per_s)
      .def_readonly("disk_write_bytes_per_s", &TierProblem::disk_write_bytes_per_s)
      .def_readonly("compute_s", &TierProblem::compute_s)
      .def_readonly("fixed", &TierProblem::fixed)
      .def_readonly("step_percent", &TierProblem::step_percent);

  py::class_<TierCost>(m, "TierCost", "Seconds per step and bytes per tier of one policy.")
      .def_readonly("compute_s", &TierCost::compute_s)
      .def_readonly("to_gpu_s", &TierCost::to_gpu_s)
      .def_readonly("to_host_s", &TierCost::to_host_s)
      .def_readonly("disk_s", &TierCost::disk_s)
      .def_readonly("io_s", &TierCost::io_s)
      .def_readonly("total_s", &TierCost::total_s)
      .def_readonly("gpu_bytes", &TierCost::gpu_bytes)
      .def_readonly("cpu_bytes", &TierCost::cpu_bytes)
      .def_readonly("disk_bytes", &TierCost::disk_bytes);

  py::class_<TierSearchResult>(m, "TierSearchResult")
      .def_readonly("policy", &TierSearchResult::policy)
      .def_readonly("cost", &TierSearchResult::cost)
      .def_readonly("evaluated", &TierSearchResult::evaluated);

  m.def("search_tier_policy", &search_tier_policy, py::arg("problem"), py::call_guard<py::gil_scoped_release>(),
        "Minimum-latency feasible tier policy on the problem's grid.");
  m.def("tier_cost", &tier_cost, py::arg("problem"), py::arg("policy"), "Cost of one policy under the tier cost model.");
  m.def("tier_min_gpu_bytes", &tier_min_gpu_bytes, py::arg("problem"),
        "Smallest GPU capacity for which a grid policy fits the CPU and disk capacities.");
  m.def("tier_problem", &tier_problem, py::arg("graph"), py::arg("hardware"), py::arg("config"),
        "The tier problem an inference graph poses on hardware (GPU capacity = the budget).");

  py::class_<TimelinePoint>(m, "TimelinePoint", "One position of a training step with its predicted bytes.")
      .def_readonly("label", &TimelinePoint::label)
      .def_readonly("phase", &TimelinePoint::phase)
      .def_readonly("layer", &TimelinePoint::layer)
      .def_readonly("before_bytes", &TimelinePoint::before_bytes)
      .def_readonly("after_bytes", &TimelinePoint::after_bytes);
  py::class_<PlanTimeline>(m, "PlanTimeline", "The predicted memory timeline of a training step, before and after a plan.")
      .def_readonly("points", &PlanTimeline::points)
      .def_readonly("budget_bytes", &PlanTimeline::budget_bytes)
      .def_readonly("unoptimized_peak_bytes", &PlanTimeline::unoptimized_peak_bytes)
      .def_readonly("predicted_peak_bytes", &PlanTimeline::predicted_peak_bytes);
  m.def("plan_timeline", &plan_timeline, py::arg("graph"), py::arg("hardware"), py::arg("config"), py::arg("plan"),
        "Predicted bytes at every position of a training step, without techniques and under the plan.");

  m.def("plan_cost_seconds", &plan_cost_seconds, py::arg("graph"), py::arg("hardware"), py::arg("plan"),
        "Modelled cost of a training plan: seconds of recompute, tiling and exposed offload transfer per step.");
  m.def(
      "plan",
      [](const ModelGraph& graph, const Config& config, const Hardware& hardware, std::optional<Calibration> calibration) {
        PlanOptions options;
        options.calibration = std::move(calibration);
        return plan(graph, hardware, config, options);
      },
      py::arg("graph"), py::arg("config"), py::arg("hardware"), py::arg("calibration") = py::none(),
      py::call_guard<py::gil_scoped_release>(),
      "Plans graph on hardware under config (the decision engine; pure and deterministic).");

  // The learned policy stage (auto_policy): its features, strategies and model, for the
  // Python side that measures the dataset and trains the model (python/memscale/policy).
  m.def("policy_feature_names", &policy::feature_names, "Names of the auto_policy features, in order.");
  m.def(
      "policy_features",
      [](const ModelGraph& graph, const Config& config, const Hardware& hardware) {
        return policy::features(graph, hardware, config).values;
      },
      py::arg("graph"), py::arg("config"), py::arg("hardware"),
      "The auto_policy features of planning graph on hardware under config: [(name, value), ...].");
  m.def(
      "policy_strategies",
      [] {
        std::vector<std::tuple<std::string, std::vector<std::string>, std::string>> out;
        for (const policy::Strategy& s : policy::strategies()) out.emplace_back(s.name, s.off, s.description);
        return out;
      },
      "The strategies the stage picks from: [(name, techniques turned off, description), ...].");
  m.def(
      "policy_narrowed",
      [](const Config& config, const std::string& strategy) {
        return policy::narrowed(config, policy::strategy(strategy));
      },
      py::arg("config"), py::arg("strategy"), "config with the techniques the strategy turns off set to off.");
  m.def("policy_shipped_model_json", &policy::shipped_model_json, "The compiled-in auto_policy model file's text.");
  m.def(
      "policy_predict",
      [](const std::string& model_json, const ModelGraph& graph, const Config& config, const Hardware& hardware) {
        const policy::Tree tree = policy::parse_tree(nlohmann::json::parse(model_json));
        return tree.predict(policy::features(graph, hardware, config)).label;
      },
      py::arg("model_json"), py::arg("graph"), py::arg("config"), py::arg("hardware"),
      "The strategy a model file's tree picks for this planning problem.");
}

}  // namespace memscale::bindings
