// Decisions of the continuous-batching serving scheduler (memscale.ContinuousScheduler):
// before every decode iteration, which running requests to preempt (and how: swap the KV
// cache to the next tier or drop it and recompute it later), which preempted requests to
// resume and which waiting requests to admit, so the projected peak stays within the
// budget. Python measures and applies; every action carries a rule id and a reason
// (docs/rules.md, "Serving").
//
// Memory of one iteration (bytes), with every model's weights resident:
//   weights + sum over models of the batch's KV cache + the largest step reservation
// where a model's batch is left-padded to its longest row, so its KV cache is
//   kv_bytes_per_token x rows x longest row
// (the layout of python/memscale/serving/batch.py), and a step's reservation is its
// activation reservation plus one layer's copy of the batch's cache (DynamicLayer.update
// and a join concatenate one layer at a time). With projection "max_length" this is
// projected over every step until the last row reaches its maximum (prompt +
// max_new_tokens - 1), rows leaving as they finish: admission never needs a preemption.
// With "next_step" only the next step is projected (more rows at once; growth past the
// budget is then met by preemption).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "memscale/core/cost_model.hpp"
#include "memscale/core/errors.hpp"
#include "memscale/core/hardware.hpp"
#include "memscale/core/sizes.hpp"

namespace memscale::serving {

/// One model's facts (the profiler's and the calibrated reservation's).
struct ServingModel {
  std::uint64_t kv_bytes_per_token = 0;            ///< K and V of every layer, one token of one row
  std::uint64_t layers = 1;                        ///< cache layers (a step copies one at a time)
  std::uint64_t decode_reservation_per_row = 0;    ///< activation reservation of one row of a decode step
  std::uint64_t prefill_reservation_per_token = 0; ///< activation reservation of a prefill, per token
  double flops_per_token = 0.0;                    ///< forward FLOPs of one token (recompute cost)
};

/// One request as the scheduler holds it.
struct ServingRequest {
  std::int64_t id = 0;
  std::size_t model = 0;            ///< index into ServingState::models
  std::uint64_t tokens = 0;         ///< tokens in its KV cache now (running or swapped; 0 otherwise)
  std::uint64_t prefill_tokens = 0; ///< tokens a (re)start prefills: the prompt, plus what it generated when dropped
  std::uint64_t max_tokens = 0;     ///< the longest its KV cache gets: prompt + max_new_tokens - 1
  bool swapped = false;             ///< its KV cache lies on the next tier
  bool dropped = false;             ///< preempted by dropping its KV cache: resuming prefills prefill_tokens
};

/// Everything one decision looks at.
struct ServingState {
  std::uint64_t budget_bytes = 0;
  std::uint64_t weight_bytes = 0;     ///< resident weights of every model
  std::string projection = "max_length";  ///< "max_length" | "next_step"
  std::uint64_t max_batch = 256;      ///< rows of one model's batch at most
  std::vector<ServingModel> models;
  std::vector<ServingRequest> running;  ///< in admission order
  std::vector<ServingRequest> queued;   ///< preempted ones first (in preemption order), then waiting, FIFO
};

/// One thing to do before the iteration. action: "preempt_swap" | "preempt_recompute" |
/// "resume_swap" | "resume_recompute" | "admit" | "wait".
struct ServingAction {
  std::string action;
  std::int64_t id = 0;
  std::string rule;
  std::string reason;
  std::uint64_t projected_bytes = 0;  ///< the projection this action was judged by
};

struct ServingDecision {
  std::vector<ServingAction> actions;
  std::uint64_t projected_bytes = 0;  ///< projected peak of the iteration: its joins and its steps
};

namespace serving_detail {

inline std::string ms(double seconds) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f ms", seconds * 1e3);
  return b;
}

/// Tokens a row holds in its cache once it has joined: its length, or its prefill.
inline std::uint64_t cached_tokens(const ServingRequest& r) { return r.tokens ? r.tokens : r.prefill_tokens; }

/// Whether `a` and `b` are prefilled together: same model, same prefill length, neither swapped.
inline bool same_prefill(const ServingRequest& a, const ServingRequest& b) {
  return !a.swapped && !b.swapped && a.model == b.model && a.prefill_tokens == b.prefill_tokens;
}

/// Projected peak of one iteration over `rows` (running, then those joining this iteration)
/// and, when given, the `joining` row, which is also checked at its prefill: the rows
/// joining before it with the same model and prefill length are prefilled in one batch
/// with it (or, when it was swapped, its cache is read back alone), beside every other
/// row's cache as it is then.
inline std::uint64_t projected_peak(const ServingState& s, const std::vector<ServingRequest>& rows,
                                    const ServingRequest* joining) {
  std::vector<const ServingRequest*> all;
  for (const auto& r : rows) all.push_back(&r);
  if (joining) all.push_back(joining);
  // Rows are right-aligned and all grow one token a step, so at the k-th step from now the
  // padded width of a model's batch is its longest row still running then; a row runs its
  // k-th step while its cache stays within max_tokens.
  std::uint64_t horizon = 1;
  if (s.projection == "max_length")
    for (const auto* r : all) horizon = std::max(horizon, r->max_tokens - std::min(r->max_tokens, cached_tokens(*r)));
  std::uint64_t peak = s.weight_bytes;
  std::vector<std::uint64_t> count(s.models.size()), width(s.models.size());
  for (std::uint64_t k = 1; k <= horizon; ++k) {
    std::fill(count.begin(), count.end(), 0);
    std::fill(width.begin(), width.end(), 0);
    for (const auto* r : all) {
      const std::uint64_t t = cached_tokens(*r) + k;
      if (t > r->max_tokens) continue;
      ++count[r->model];
      width[r->model] = std::max(width[r->model], t);
    }
    std::uint64_t kv = 0, step = 0;
    for (std::size_t m = 0; m < s.models.size(); ++m) {
      const auto& model = s.models[m];
      const std::uint64_t bytes = model.kv_bytes_per_token * count[m] * width[m];
      kv += bytes;
      if (count[m])
        step = std::max(step, model.decode_reservation_per_row * count[m] + bytes / std::max<std::uint64_t>(1, model.layers));
    }
    peak = std::max(peak, s.weight_bytes + kv + step);
  }
  if (joining) {
    std::vector<std::uint64_t> now_count(s.models.size(), 0), now_width(s.models.size(), 0);
    std::uint64_t group = 1;
    for (const auto& r : rows) {
      if (same_prefill(r, *joining) && r.tokens == 0) {
        ++group;
        continue;
      }
      ++now_count[r.model];
      now_width[r.model] = std::max(now_width[r.model], cached_tokens(r));
    }
    std::uint64_t now = 0;
    for (std::size_t m = 0; m < s.models.size(); ++m) now += s.models[m].kv_bytes_per_token * now_count[m] * now_width[m];
    const auto& model = s.models[joining->model];
    const std::uint64_t prefill = joining->swapped ? model.kv_bytes_per_token * joining->tokens
                                                   : group * (model.kv_bytes_per_token + model.prefill_reservation_per_token) *
                                                         joining->prefill_tokens;
    peak = std::max(peak, s.weight_bytes + now + prefill);
  }
  return peak;
}

inline std::string breakdown(const ServingState& s, std::uint64_t peak) {
  return format_bytes(peak) + " of the budget " + format_bytes(s.budget_bytes) + " (weights " +
         format_bytes(s.weight_bytes) + ", padded KV caches and the step's working set the rest)";
}

inline void check(const ServingState& s) {
  if (s.projection != "max_length" && s.projection != "next_step")
    throw ConfigError("projection: got \"" + s.projection + "\", expected \"max_length\" or \"next_step\"");
  if (s.max_batch < 1) throw ConfigError("max_batch: got 0, expected an integer >= 1");
  for (const auto* list : {&s.running, &s.queued})
    for (const auto& r : *list)
      if (r.model >= s.models.size())
        throw ConfigError("request " + std::to_string(r.id) + ": model index " + std::to_string(r.model) + " of " +
                          std::to_string(s.models.size()) + " models");
}

}  // namespace serving_detail

/// Seconds to move `bytes` of KV cache to the next tier and back: pinned host on a GPU
/// machine, disk on a CPU-only one.
inline double swap_seconds(std::uint64_t bytes, const cost::Rates& rates) {
  const double b = static_cast<double>(bytes);
  return rates.gpu ? 2.0 * b / rates.host_to_device + 2.0 * cost::kTransferLatencyS
                   : b / rates.disk_write + b / rates.disk_read + 2.0 * cost::kTransferLatencyS;
}

/// Seconds to rebuild a dropped KV cache of `tokens` tokens by one prefill.
inline double recompute_seconds(std::uint64_t tokens, const ServingModel& model, const cost::Rates& rates) {
  return static_cast<double>(tokens) * model.flops_per_token / rates.flops_per_s;
}

/// The preemption of `r`: swap or drop-and-recompute, whichever the cost model says is cheaper.
inline ServingAction preempt(const ServingState& s, const ServingRequest& r, const cost::Rates& rates,
                             std::uint64_t peak) {
  const auto& model = s.models[r.model];
  const std::uint64_t bytes = model.kv_bytes_per_token * r.tokens;
  const double swap = swap_seconds(bytes, rates), recompute = recompute_seconds(r.tokens, model, rates);
  const std::string tier = rates.gpu ? "pinned host memory" : "disk";
  const std::string why = "the next step would peak at " + serving_detail::breakdown(s, peak) + "; ";
  if (recompute < swap)
    return {"preempt_recompute", r.id, "serving.preempt_recompute",
            why + "drop its " + std::to_string(r.tokens) + "-token KV cache and recompute it (" +
                serving_detail::ms(recompute) + ") rather than swap " + format_bytes(bytes) + " to " + tier +
                " and back (" + serving_detail::ms(swap) + ")",
            peak};
  return {"preempt_swap", r.id, "serving.preempt_swap",
          why + "swap its KV cache (" + format_bytes(bytes) + ") to " + tier + " and back (" +
              serving_detail::ms(swap) + ") rather than recompute " + std::to_string(r.tokens) + " tokens (" +
              serving_detail::ms(recompute) + ")",
          peak};
}

/// Decides one iteration. While the running rows' projection is over the budget the last
/// admitted row is preempted (it has done the least work), down to one row; otherwise
/// queued requests join in order (preempted ones first) as long as each one's projection,
/// its prefill included, fits. The first that does not fit waits, and so do all behind
/// it (no request overtakes an older one).
inline ServingDecision decide_iteration(const ServingState& s, const Hardware& hw) {
  using namespace serving_detail;
  check(s);
  const cost::Rates rates = cost::rates_of(hw);
  ServingDecision d;
  std::vector<ServingRequest> rows = s.running;
  std::uint64_t peak = projected_peak(s, rows, nullptr);
  bool preempted = false;
  while (peak > s.budget_bytes && rows.size() > 1) {
    d.actions.push_back(preempt(s, rows.back(), rates, peak));
    rows.pop_back();
    peak = projected_peak(s, rows, nullptr);
    preempted = true;
  }
  if (!preempted) {
    std::vector<std::size_t> per_model(s.models.size(), 0);
    for (const auto& r : rows) ++per_model[r.model];
    for (std::size_t i = 0; i < s.queued.size(); ++i) {
      const auto& q = s.queued[i];
      const std::uint64_t with = projected_peak(s, rows, &q);
      const bool full = per_model[q.model] >= s.max_batch;
      if (full || with > s.budget_bytes) {
        d.actions.push_back({"wait", q.id, full ? "serving.batch_full" : "serving.wait_memory",
                             full ? "its model's batch already has max_batch = " + std::to_string(s.max_batch) + " rows"
                                  : "joining would peak at " + breakdown(s, with) + "; it waits for rows to finish",
                             with});
        break;
      }
      std::string action = "admit", rule = "serving.admit";
      if (q.swapped) action = "resume_swap", rule = "serving.resume_swap";
      else if (q.dropped) action = "resume_recompute", rule = "serving.resume_recompute";
      d.actions.push_back({action, q.id, rule, "the iteration with it peaks at " + breakdown(s, with), with});
      rows.push_back(q);
      ++per_model[q.model];
      peak = with;
    }
  }
  // the iteration's projection: its steps, and every admission's prefill or read-back
  d.projected_bytes = projected_peak(s, rows, nullptr);
  for (const auto& a : d.actions)
    if (a.action == "admit" || a.action == "resume_swap" || a.action == "resume_recompute")
      d.projected_bytes = std::max(d.projected_bytes, a.projected_bytes);
  return d;
}

/// Whether `r` could ever run: alone, at its projection and its prefill, beside the
/// weights. A request that cannot is refused at submit with the budget it would need.
inline std::uint64_t alone_bytes(const ServingState& s, const ServingRequest& r) {
  serving_detail::check(s);
  ServingState max_state = s;
  max_state.projection = "max_length";
  return serving_detail::projected_peak(max_state, {}, &r);
}

}  // namespace memscale::serving
