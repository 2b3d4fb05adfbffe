#include <gtest/gtest.h>

#include "memscale/core/glob.hpp"

namespace memscale {
namespace {

TEST(Glob, MatchesLikePythonFnmatchcase) {
  EXPECT_TRUE(glob_match("blocks.*", "blocks.3.mlp"));  // '*' crosses dots
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("*.mlp", "model.layers.3.mlp"));
  EXPECT_FALSE(glob_match("*.mlp", "model.layers.3.mlp.fc"));
  EXPECT_TRUE(glob_match("h.?", "h.3"));
  EXPECT_FALSE(glob_match("h.?", "h.13"));
  EXPECT_TRUE(glob_match("h.[0-4]", "h.3"));
  EXPECT_FALSE(glob_match("h.[0-4]", "h.7"));
  EXPECT_TRUE(glob_match("h.[!0-4]", "h.7"));
  EXPECT_FALSE(glob_match("h.[!0-4]", "h.2"));
  EXPECT_TRUE(glob_match("a[]]b", "a]b"));   // ']' first in a class is literal
  EXPECT_TRUE(glob_match("a[b", "a[b"));     // unterminated class: literal '['
  EXPECT_FALSE(glob_match("lm_head", "lm_head2"));
  EXPECT_FALSE(glob_match("Lm_head", "lm_head"));  // case-sensitive
  EXPECT_TRUE(glob_match("*a*b*c", "xxaxxbxxc"));
  EXPECT_FALSE(glob_match("*a*b*c", "xxaxxcxxb"));
  EXPECT_TRUE(glob_match("", ""));
  EXPECT_FALSE(glob_match("", "x"));
}

}  // namespace
}  // namespace memscale
