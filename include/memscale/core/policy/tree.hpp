// A decision tree read from JSON (the model file python/memscale/policy/train.py writes):
// deterministic at inference, thresholds compared as sklearn does (x <= threshold goes left).
//
//   {"format": "memscale.auto_policy/1", "features": [...], "labels": [...],
//    "nodes": [{"feature": 0, "threshold": 1.5, "left": 1, "right": 2},
//              {"label": 0, "samples": 12}, ...], ...}
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memscale/core/errors.hpp"
#include "memscale/core/json_fields.hpp"
#include "memscale/core/policy/features.hpp"
#include "memscale/core/policy/strategies.hpp"

namespace memscale::policy {

struct TreeNode {
  std::int64_t feature = -1;  ///< -1: a leaf
  double threshold = 0.0;
  std::int64_t left = -1, right = -1;
  std::int64_t label = -1;  ///< leaves: index into Tree::labels
  std::int64_t samples = 0;
};

/// One comparison on the way from the root to the leaf: what decided.
struct Step {
  std::string feature;
  double value = 0.0, threshold = 0.0;
  bool went_left = false;  ///< value <= threshold
};

struct Prediction {
  std::string label;
  std::vector<Step> path;
  std::int64_t leaf_samples = 0;
};

struct Tree {
  std::string format;
  std::vector<std::string> features, labels;
  std::vector<TreeNode> nodes;
  std::string trained_on;  ///< a line on the dataset (families, cases) for the plan trace

  /// Walks the tree. Deterministic: the same features give the same leaf and path.
  Prediction predict(const Features& f) const {
    Prediction p;
    std::size_t at = 0;
    for (std::size_t hops = 0; hops <= nodes.size(); ++hops) {
      const TreeNode& node = nodes[at];
      if (node.feature < 0) {
        p.label = labels[static_cast<std::size_t>(node.label)];
        p.leaf_samples = node.samples;
        return p;
      }
      const std::string& name = features[static_cast<std::size_t>(node.feature)];
      const double v = f.at(name);
      const bool left = v <= node.threshold;
      p.path.push_back({name, v, node.threshold, left});
      at = static_cast<std::size_t>(left ? node.left : node.right);
    }
    throw MemScaleError("auto_policy model: the tree has a cycle");  // parse() rules this out
  }
};

/// Parses and checks a model file's JSON: known format, features the engine computes,
/// children inside the node list and below their parent (so every walk ends at a leaf).
inline Tree parse_tree(const nlohmann::json& j) {
  namespace d = json_fields;
  Tree t;
  t.format = d::string(j, "format", "auto_policy");
  if (t.format != "memscale.auto_policy/1")
    throw ConfigError("auto_policy.format: \"" + t.format + "\"; allowed: \"memscale.auto_policy/1\"");
  t.features = d::strings(j, "features", "auto_policy");
  for (const std::string& name : t.features) {
    bool known = false;
    for (const std::string& n : feature_names()) known = known || n == name;
    if (!known) throw ConfigError("auto_policy.features: \"" + name + "\" is not a feature the engine computes");
  }
  t.labels = d::strings(j, "labels", "auto_policy");
  for (const std::string& label : t.labels) (void)strategy(label);  // throws naming the label
  t.trained_on = d::optional<std::string>(j, "trained_on", "auto_policy", "", d::as_string);
  const auto& nodes = d::require(j, "nodes", "auto_policy");
  if (!nodes.is_array() || nodes.empty()) throw ConfigError("auto_policy.nodes: expected a non-empty array");
  const auto n = static_cast<std::int64_t>(nodes.size());
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& node = nodes[static_cast<std::size_t>(i)];
    const std::string path = "auto_policy.nodes[" + std::to_string(i) + "]";
    TreeNode out;
    if (node.contains("label")) {
      out.label = d::i64(node, "label", path);
      out.samples = d::optional<std::int64_t>(node, "samples", path, 0, d::as_i64);
      if (out.label < 0 || out.label >= static_cast<std::int64_t>(t.labels.size()))
        throw ConfigError(path + ".label: " + std::to_string(out.label) + " is not an index into labels");
    } else {
      out.feature = d::i64(node, "feature", path);
      out.threshold = d::number(node, "threshold", path);
      out.left = d::i64(node, "left", path);
      out.right = d::i64(node, "right", path);
      if (out.feature < 0 || out.feature >= static_cast<std::int64_t>(t.features.size()))
        throw ConfigError(path + ".feature: " + std::to_string(out.feature) + " is not an index into features");
      for (const std::int64_t child : {out.left, out.right})
        if (child <= i || child >= n)
          throw ConfigError(path + ": child " + std::to_string(child) + " must come after its parent and exist");
    }
    t.nodes.push_back(out);
  }
  return t;
}

}  // namespace memscale::policy
