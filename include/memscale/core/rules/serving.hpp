// Decisions of the continuous-batching serving scheduler (memscale.ContinuousScheduler):
// before every decode iteration, which running requests to preempt (and how: swap the KV
// cache to the next tier or drop it and recompute it later), which preempted requests to
// resume and which waiting requests to admit, so the projected peak stays within the
// budget. Python measures and applies; every action carries a rule id and a reason
// (docs/rules.md, "Serving").
//
// Memory of one iteration (bytes), with every model's weights resident:
//   weights + sum over models of the batch's KV cache + the largest step working set
// where a model's rows are packed into one sequence (python/memscale/serving/batch.py:
// no padding, each row attends to its own columns), so its KV cache is
//   kv_bytes_per_token x the sum of its rows' lengths
// and a step feeds every running row its next token and every joining row its whole
// prefill (the prompt, plus what it generated when it was dropped) in one forward: the
// step's working set is the activation reservation of the fed tokens, one layer's copy
// of the batch's cache (DynamicLayer.update and a join concatenate one layer at a time),
// the attending layer's K and V at every query head (grouped-query attention repeats
// them) and the attention of the fed tokens over the cache's columns. With projection
// "max_length" this is projected over every step until the last row reaches its maximum
// (prompt + max_new_tokens - 1), rows leaving as they finish: admission never needs a
// preemption. With "next_step" only the next step is projected (more rows at once;
// growth past the budget is then met by preemption).
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
  std::uint64_t attention_bytes_per_pair = 0;      ///< one fed token x one cached column: scores of every head + mask
  std::uint64_t attention_bytes_per_column = 0;    ///< one cached column of the layer attending: K and V at every query head
};

/// One request as the scheduler holds it.
struct ServingRequest {
  std::int64_t id = 0;
  std::size_t model = 0;            ///< index into ServingState::models
  std::uint64_t tokens = 0;         ///< tokens in its KV cache now (running or swapped; 0 otherwise)
  std::uint64_t prefill_tokens = 0; ///< tokens a (re)start feeds: the prompt, plus every token it generated when dropped
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

/// Tokens in `r`'s cache after the k-th step from now (k >= 1): a row that joins this
/// iteration (tokens == 0) holds its prefill after the first.
inline std::uint64_t cached_after(const ServingRequest& r, std::uint64_t k) {
  return r.tokens ? r.tokens + k : r.prefill_tokens + k - 1;
}

/// Whether `r` runs the k-th step from now: every row runs the next one, then while its
/// cache stays within max_tokens.
inline bool runs(const ServingRequest& r, std::uint64_t k) { return k == 1 || cached_after(r, k) <= r.max_tokens; }

/// Tokens the k-th step feeds `r`: its prefill when it joins, else its next token.
inline std::uint64_t fed(const ServingRequest& r, std::uint64_t k) { return k == 1 && !r.tokens ? r.prefill_tokens : 1; }

/// Projected peak of the iteration and, with "max_length", every later one, over `rows`
/// (running, then those joining this iteration).
inline std::uint64_t projected_peak(const ServingState& s, const std::vector<ServingRequest>& rows) {
  std::uint64_t horizon = 1;
  if (s.projection == "max_length")
    for (const auto& r : rows) horizon = std::max(horizon, r.max_tokens - std::min(r.max_tokens, cached_after(r, 0)));
  std::uint64_t peak = s.weight_bytes;
  // a swapped row's read-back: its cache is staged whole on the device before it joins
  std::uint64_t read_back = 0;
  for (const auto& r : rows)
    if (r.swapped) read_back = std::max(read_back, s.models[r.model].kv_bytes_per_token * r.tokens);
  std::vector<std::uint64_t> columns(s.models.size()), decodes(s.models.size()), prefills(s.models.size());
  for (std::uint64_t k = 1; k <= horizon; ++k) {
    std::fill(columns.begin(), columns.end(), 0);
    std::fill(decodes.begin(), decodes.end(), 0);
    std::fill(prefills.begin(), prefills.end(), 0);
    for (const auto& r : rows) {
      if (!runs(r, k)) continue;
      columns[r.model] += cached_after(r, k);
      (k == 1 && !r.tokens ? prefills : decodes)[r.model] += fed(r, k);
    }
    std::uint64_t kv = 0, step = 0;
    for (std::size_t m = 0; m < s.models.size(); ++m) {
      const std::uint64_t feeds = decodes[m] + prefills[m];
      if (!feeds) continue;
      const auto& model = s.models[m];
      const std::uint64_t bytes = model.kv_bytes_per_token * columns[m];
      kv += bytes;
      step = std::max(step, model.decode_reservation_per_row * decodes[m] +
                                model.prefill_reservation_per_token * prefills[m] +
                                bytes / std::max<std::uint64_t>(1, model.layers) +
                                model.attention_bytes_per_column * columns[m] +
                                model.attention_bytes_per_pair * feeds * columns[m]);
    }
    peak = std::max(peak, s.weight_bytes + kv + step + (k == 1 ? read_back : 0));
  }
  return peak;
}

inline std::string breakdown(const ServingState& s, std::uint64_t peak) {
  return format_bytes(peak) + " of the budget " + format_bytes(s.budget_bytes) + " (weights " +
         format_bytes(s.weight_bytes) + ", packed KV caches and the step's working set the rest)";
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

/// The preemption of `r`: swap or drop-and-recompute, whichever the cost model says is
/// cheaper; a swap whenever the recompute's prefill (its prompt and every token it
/// generated, fed at once) would not fit the budget even alone, so it could never resume.
inline ServingAction preempt(const ServingState& s, const ServingRequest& r, const cost::Rates& rates,
                             std::uint64_t peak) {
  const auto& model = s.models[r.model];
  const std::uint64_t bytes = model.kv_bytes_per_token * r.tokens;
  const double swap = swap_seconds(bytes, rates), recompute = recompute_seconds(r.tokens, model, rates);
  const std::string tier = rates.gpu ? "pinned host memory" : "disk";
  const std::string why = "the next step would peak at " + serving_detail::breakdown(s, peak) + "; ";
  ServingRequest dropped = r;
  dropped.tokens = 0, dropped.prefill_tokens = r.tokens + 1, dropped.dropped = true;
  const std::uint64_t refill = serving_detail::projected_peak(s, {dropped});
  if (recompute < swap && refill <= s.budget_bytes)
    return {"preempt_recompute", r.id, "serving.preempt_recompute",
            why + "drop its " + std::to_string(r.tokens) + "-token KV cache and recompute it (" +
                serving_detail::ms(recompute) + ") rather than swap " + format_bytes(bytes) + " to " + tier +
                " and back (" + serving_detail::ms(swap) + ")",
            peak};
  if (recompute < swap)
    return {"preempt_swap", r.id, "serving.preempt_swap",
            why + "swap its KV cache (" + format_bytes(bytes) + ") to " + tier + " and back (" +
                serving_detail::ms(swap) + "): recomputing it would be cheaper (" + serving_detail::ms(recompute) +
                ") but its prefill alone would peak at " + format_bytes(refill) + ", over the budget",
            peak};
  return {"preempt_swap", r.id, "serving.preempt_swap",
          why + "swap its KV cache (" + format_bytes(bytes) + ") to " + tier + " and back (" +
              serving_detail::ms(swap) + ") rather than recompute " + std::to_string(r.tokens) + " tokens (" +
              serving_detail::ms(recompute) + ")",
          peak};
}

/// Decides one iteration. While the running rows' projection is over the budget the last
/// admitted row is preempted (it has done the least work), down to one row; otherwise
/// queued requests join in order (preempted ones first) as long as the projection with
/// each one, its prefill in the step included, fits. The first that does not fit waits, and so do all behind
/// it (no request overtakes an older one).
inline ServingDecision decide_iteration(const ServingState& s, const Hardware& hw) {
  using namespace serving_detail;
  check(s);
  const cost::Rates rates = cost::rates_of(hw);
  ServingDecision d;
  std::vector<ServingRequest> rows = s.running;
  std::uint64_t peak = projected_peak(s, rows);
  bool preempted = false;
  while (peak > s.budget_bytes && rows.size() > 1) {
    d.actions.push_back(preempt(s, rows.back(), rates, peak));
    rows.pop_back();
    peak = projected_peak(s, rows);
    preempted = true;
  }
  if (!preempted) {
    std::vector<std::size_t> per_model(s.models.size(), 0);
    for (const auto& r : rows) ++per_model[r.model];
    for (std::size_t i = 0; i < s.queued.size(); ++i) {
      const auto& q = s.queued[i];
      rows.push_back(q);
      const std::uint64_t with = projected_peak(s, rows);
      const bool full = per_model[q.model] >= s.max_batch;
      if (full || with > s.budget_bytes) {
        d.actions.push_back({"wait", q.id, full ? "serving.batch_full" : "serving.wait_memory",
                             full ? "its model's batch already has max_batch = " + std::to_string(s.max_batch) + " rows"
                                  : "joining would peak at " + breakdown(s, with) + "; it waits for rows to finish",
                             with});
        rows.pop_back();
        break;
      }
      std::string action = "admit", rule = "serving.admit";
      if (q.swapped) action = "resume_swap", rule = "serving.resume_swap";
      else if (q.dropped) action = "resume_recompute", rule = "serving.resume_recompute";
      d.actions.push_back({action, q.id, rule, "the iteration with it peaks at " + breakdown(s, with), with});
      ++per_model[q.model];
      peak = with;
    }
  }
  // the iteration's projection: its step (prefills and read-backs included) and, with
  // "max_length", every later one
  d.projected_bytes = projected_peak(s, rows);
  return d;
}

/// Whether `r` could ever run: alone, at its projection and its prefill, beside the
/// weights. A request that cannot is refused at submit with the budget it would need.
inline std::uint64_t alone_bytes(const ServingState& s, const ServingRequest& r) {
  serving_detail::check(s);
  ServingState max_state = s;
  max_state.projection = "max_length";
  return serving_detail::projected_peak(max_state, {r});
}

}  // namespace memscale::serving
