// The inference activation reservation: every behaviour of its formula, and calibration of the safety factor.
#include <random>

#include "engine_fixtures.hpp"

namespace memscale::test {
namespace {

ModelGraph decoder(std::int64_t batch, std::int64_t hidden, std::int64_t intermediate, bool kv = true) {
  ModelGraph g;
  g.training = false;
  g.optimizer = "none";
  g.dtype = "bfloat16";
  g.batch = batch;
  g.seq = 4096;
  for (int i = 0; i < 4; ++i) {
    Layer l;
    l.index = i;
    l.name = "layers." + std::to_string(i);
    l.kind = "block";
    l.param_bytes = 1 << 20;
    l.kv_cache_bytes = kv ? 1 << 20 : 0;
    l.dims.hidden = hidden;
    l.dims.intermediate = intermediate;
    g.layers.push_back(l);
  }
  return g;
}

Hardware gpus(int n) {
  Hardware hw;
  for (int i = 0; i < n; ++i) hw.devices.push_back({"cuda", i, "GPU", 24ull << 30, 24ull << 30});
  hw.host_total_bytes = hw.host_available_bytes = 64ull << 30;
  return hw;
}

ReservationConfig defaults() { return Config::from_json_text("{}").reservation; }

TEST(Reservation, ScaledEstimateIsBelowFlatForSmallBatch) {
  const Reservation r = activation_reservation(decoder(4, 4096, 11008), gpus(1), defaults(), 1);
  EXPECT_EQ(r.source, "scaled");
  EXPECT_EQ(r.widest_buffer, 11008);  // the MLP intermediate is wider than hidden
  EXPECT_EQ(r.tokens_per_step, 4 * 4096);                 // batch x seq of the example
  EXPECT_EQ(r.scaled_bytes, 11008ull * 4 * 4096 * 2 * 2);  // widest x tokens x bf16 x safety 2
  EXPECT_LT(r.scaled_bytes, r.flat_bytes);
  EXPECT_EQ(r.per_device_bytes, r.scaled_bytes + r.graph_capture_bytes);
}

TEST(Reservation, IsCappedAtTheFlatValue) {
  ReservationConfig c = defaults();
  c.safety_factor = 40.0;
  const Reservation r = activation_reservation(decoder(4, 8192, 28672), gpus(1), c, 1);
  EXPECT_EQ(r.source, "flat_cap");
  EXPECT_GT(r.scaled_bytes, c.flat_bytes);
  EXPECT_EQ(r.per_device_bytes, c.flat_bytes + c.graph_capture_bytes);
  // The cap is the Config's flat value.
  c.flat_bytes = 1ull << 30;
  EXPECT_EQ(activation_reservation(decoder(4, 8192, 28672), gpus(1), c, 1).per_device_bytes,
            (1ull << 30) + c.graph_capture_bytes);
}

/// The decoder above with an output head of `vocab` over `hidden`.
ModelGraph with_head(ModelGraph g, std::int64_t vocab) {
  Layer head;
  head.index = static_cast<std::int64_t>(g.layers.size());
  head.name = "lm_head";
  head.kind = "lm_head";
  head.param_bytes = 1 << 20;
  head.dims.hidden = g.layers.front().dims.hidden;
  head.dims.vocab = vocab;
  g.layers.push_back(head);
  return g;
}

TEST(Reservation, CountsTheOutputHeadsLogitsOfTheFullForward) {
  // A vocabulary far wider than the MLP: the head's logits for every token of the step
  // plus its input outgrow the widest buffer's scaled figure.
  ModelGraph g = with_head(decoder(1, 512, 1024), 128000);
  g.seq = 64;
  const Reservation r = activation_reservation(g, gpus(1), defaults(), 1);
  EXPECT_EQ(r.source, "output_head");
  EXPECT_EQ(r.output_head_bytes, (128000ull + 512) * 64 * 2);  // tokens x (vocab + hidden) x bf16
  EXPECT_GT(r.output_head_bytes, r.scaled_bytes);
  EXPECT_EQ(r.per_device_bytes, r.output_head_bytes + r.graph_capture_bytes);
  // A narrow vocabulary leaves the widest buffer in charge; the head's figure is still stated.
  const Reservation narrow = activation_reservation(with_head(decoder(4, 4096, 11008), 1000), gpus(1), defaults(), 1);
  EXPECT_EQ(narrow.source, "scaled");
  EXPECT_EQ(narrow.output_head_bytes, (1000ull + 4096) * 4 * 4096 * 2);
  EXPECT_EQ(narrow.per_device_bytes, narrow.scaled_bytes + narrow.graph_capture_bytes);
  // The flat cap bounds the heuristic, not the logits: they are exact.
  ReservationConfig small = defaults();
  small.flat_bytes = 1 << 20;
  const Reservation capped = activation_reservation(g, gpus(1), small, 1);
  EXPECT_EQ(capped.source, "output_head");
  EXPECT_EQ(capped.per_device_bytes, r.output_head_bytes + capped.graph_capture_bytes);
  // And the plan's JSON keeps it.
  Plan p;
  p.reservation = r;
  EXPECT_EQ(Plan::from_json_text(p.to_json_text()).reservation, r);
}

TEST(Reservation, FallsBackToFlatWhenDimsAreMissing) {
  const Reservation r = activation_reservation(decoder(4, 0, 0), gpus(1), defaults(), 1);
  EXPECT_EQ(r.source, "flat_fallback");
  EXPECT_EQ(r.widest_buffer, 0);
  EXPECT_EQ(r.per_device_bytes, defaults().flat_bytes + defaults().graph_capture_bytes);
}

TEST(Reservation, ScalesWithDeviceCount) {
  const ModelGraph g = decoder(4, 4096, 11008);
  const Reservation one = activation_reservation(g, gpus(1), defaults(), 1);
  const Reservation four = activation_reservation(g, gpus(4), defaults(), 4);
  EXPECT_EQ(four.per_device_bytes, one.per_device_bytes);
  EXPECT_EQ(four.bytes, 4 * one.bytes);
  // Through the engine: the plan's reservation counts the detected GPUs.
  const Plan p = plan(g, gpus(4), Config::from_json_text(R"({"force_optimize": true})"));
  EXPECT_EQ(p.reservation.bytes, 4 * p.reservation.per_device_bytes);
  EXPECT_THROW(activation_reservation(g, gpus(1), defaults(), 0), ConfigError);
}

TEST(Reservation, AddsGraphCaptureHeadroomOnGpusOnly) {
  const ModelGraph g = decoder(4, 4096, 11008);
  const Reservation gpu = activation_reservation(g, gpus(1), defaults(), 1);
  Hardware cpu;
  cpu.host_total_bytes = cpu.host_available_bytes = 64ull << 30;
  const Reservation host = activation_reservation(g, cpu, defaults(), 1);
  EXPECT_EQ(gpu.graph_capture_bytes, defaults().graph_capture_bytes);
  EXPECT_EQ(host.graph_capture_bytes, 0u);
  EXPECT_EQ(gpu.per_device_bytes - host.per_device_bytes, defaults().graph_capture_bytes);
}

TEST(Reservation, TokensPerStepAreTheExamplesBatchTimesSeq) {
  const ReservationConfig c = defaults();
  EXPECT_EQ(c.prefill_tokens, 0);  // derive from the graph
  // A KV-cached decoder: the prefill of the whole example is its biggest step.
  const Reservation b1 = activation_reservation(decoder(1, 4096, 11008), gpus(1), c, 1);
  const Reservation b8 = activation_reservation(decoder(8, 4096, 11008), gpus(1), c, 1);
  EXPECT_EQ(b1.tokens_per_step, 4096);
  EXPECT_EQ(b8.tokens_per_step, 8 * 4096);
  EXPECT_EQ(b8.scaled_bytes, 8 * b1.scaled_bytes);
  // A model without a KV cache processes batch x seq tokens in one step as well.
  EXPECT_EQ(activation_reservation(decoder(4, 4096, 11008, false), gpus(1), c, 1).tokens_per_step, 4 * 4096);
  // The model's max positions cap the sequence where the graph states them.
  ModelGraph capped = decoder(2, 4096, 11008);
  capped.max_positions = 1024;
  EXPECT_EQ(activation_reservation(capped, gpus(1), c, 1).tokens_per_step, 2 * 1024);
  capped.max_positions = 1 << 20;  // a limit above the example changes nothing
  EXPECT_EQ(activation_reservation(capped, gpus(1), c, 1).tokens_per_step, 2 * 4096);
  // An explicit reservation.prefill_tokens overrides the graph, above or below it.
  ReservationConfig chunk = c;
  chunk.prefill_tokens = 8192;
  EXPECT_EQ(activation_reservation(decoder(1, 4096, 11008), gpus(1), chunk, 1).tokens_per_step, 8192);
  EXPECT_EQ(activation_reservation(decoder(8, 4096, 11008), gpus(1), chunk, 1).tokens_per_step, 8192);
  // And the plan's trace says where the figure came from.
  const Plan p = plan(decoder(2, 4096, 11008), gpus(1), Config::from_json_text(R"({"force_optimize": true})"));
  bool said = false;
  for (const auto& t : p.trace) said |= t.find("8192 tokens per step from the example inputs") != std::string::npos;
  EXPECT_TRUE(said);
}

TEST(Calibration, RecoversAKnownFactorFromSyntheticMeasurements) {
  const double factor = 1.37;
  std::vector<ReservationSample> exact;
  for (std::int64_t tokens : {512, 2048, 8192, 20000})
    for (std::int64_t widest : {2048, 11008}) {
      const double base = static_cast<double>(widest * tokens * 2);
      exact.push_back({widest, tokens, 2, static_cast<std::uint64_t>(std::llround(base * factor))});
    }
  const Calibration c = calibrate_safety_factor(exact);
  EXPECT_NEAR(c.safety_factor, factor, 1e-6);
  EXPECT_NEAR(c.least_squares_factor, factor, 1e-6);
  EXPECT_EQ(c.samples, exact.size());
  // With measurement noise (each peak 0-10% under the true factor's), the fitted factor
  // covers every sample and stays within the noise of the truth.
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> noise(0.90, 1.0);
  std::vector<ReservationSample> noisy;
  for (const auto& s : exact) {
    ReservationSample n = s;
    n.measured_bytes = static_cast<std::uint64_t>(static_cast<double>(s.measured_bytes) * noise(rng));
    noisy.push_back(n);
  }
  const Calibration cn = calibrate_safety_factor(noisy);
  EXPECT_LE(cn.safety_factor, factor);
  EXPECT_GE(cn.safety_factor, factor * 0.9);
  for (const auto& s : noisy) {
    const double base = static_cast<double>(s.widest_buffer) * static_cast<double>(s.tokens_per_step) * 2.0;
    EXPECT_GE(cn.safety_factor * base + 1.0, static_cast<double>(s.measured_bytes));
  }
  EXPECT_LE(cn.least_squares_factor, cn.safety_factor);
}

TEST(Calibration, IsStoredInThePlan) {
  const ModelGraph g = decoder(4, 4096, 11008);
  const Calibration c = calibrate_safety_factor({{11008, 8192, 2, 11008ull * 8192 * 2 * 3}});
  PlanOptions options;
  options.calibration = c;
  const Plan p = plan(g, gpus(1), Config::from_json_text(R"({"force_optimize": true})"), options);
  EXPECT_TRUE(p.reservation.calibrated);
  EXPECT_EQ(p.reservation.calibration_samples, 1);
  EXPECT_DOUBLE_EQ(p.reservation.safety_factor, 3.0);
  EXPECT_EQ(p.reservation.scaled_bytes, 11008ull * 4 * 4096 * 2 * 3);
  EXPECT_NE(p.to_json_text().find("\"calibrated\": true"), std::string::npos);
  // A sample made from a plan's reservation and a measurement has the plan's quantities.
  const ReservationSample s = reservation_sample(p.reservation, g.dtype, 123456789);
  EXPECT_EQ(s.widest_buffer, 11008);
  EXPECT_EQ(s.tokens_per_step, 4 * 4096);
  EXPECT_EQ(s.dtype_bytes, 2u);
}

TEST(Calibration, RejectsUnusableSamples) {
  EXPECT_THROW(calibrate_safety_factor({}), ConfigError);
  try {
    calibrate_safety_factor({{4096, 8192, 2, 1000}, {4096, 0, 2, 1000}});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("calibration.samples[1].tokens_per_step: got 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(calibrate_safety_factor({{4096, 8192, 2, 0}}), ConfigError);
}

}  // namespace
}  // namespace memscale::test
