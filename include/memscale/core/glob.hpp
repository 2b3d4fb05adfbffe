// Glob matching of layer names for Config.layer_overrides, with Python fnmatch's rules
// (case-sensitive, as fnmatch.fnmatchcase) so a pattern means the same thing in the
// Python API and in C++:
//   *       any run of characters, dots included ("blocks.*" matches "blocks.3.mlp")
//   ?       exactly one character
//   [abc]   one of the listed characters; ranges "[0-9]"; "[!abc]" negates
// A "[" without a closing "]" matches a literal "[".
#pragma once

#include <cstddef>
#include <string_view>

namespace memscale {

namespace glob_detail {

/// Matches the bracket class starting at pattern[p] (a '[') against c. Sets `end` to the
/// index just past the closing ']'; returns false with end = npos when there is none.
inline bool match_class(std::string_view pattern, std::size_t p, char c, std::size_t& end) {
  std::size_t i = p + 1;
  bool negate = false;
  if (i < pattern.size() && pattern[i] == '!') negate = true, ++i;
  const std::size_t first = i;
  bool matched = false;
  // A ']' right after '[' or '[!' is a literal member, as in fnmatch.
  while (i < pattern.size() && (pattern[i] != ']' || i == first)) {
    if (i + 2 < pattern.size() && pattern[i + 1] == '-' && pattern[i + 2] != ']') {
      if (pattern[i] <= c && c <= pattern[i + 2]) matched = true;
      i += 3;
    } else {
      if (pattern[i] == c) matched = true;
      ++i;
    }
  }
  if (i >= pattern.size()) {
    end = std::string_view::npos;
    return false;
  }
  end = i + 1;
  return matched != negate;
}

}  // namespace glob_detail

/// True when `text` matches the fnmatch-style `pattern` as a whole.
inline bool glob_match(std::string_view pattern, std::string_view text) {
  std::size_t p = 0, t = 0;
  std::size_t star_p = std::string_view::npos, star_t = 0;
  while (t < text.size()) {
    if (p < pattern.size()) {
      const char pc = pattern[p];
      if (pc == '*') {
        star_p = p++;
        star_t = t;
        continue;
      }
      if (pc == '?') {
        ++p, ++t;
        continue;
      }
      if (pc == '[') {
        std::size_t end = 0;
        const bool ok = glob_detail::match_class(pattern, p, text[t], end);
        if (end == std::string_view::npos) {  // unterminated: a literal '['
          if (text[t] == '[') {
            ++p, ++t;
            continue;
          }
        } else if (ok) {
          p = end, ++t;
          continue;
        }
      } else if (pc == text[t]) {
        ++p, ++t;
        continue;
      }
    }
    // Mismatch: let the last '*' swallow one more character, or fail.
    if (star_p == std::string_view::npos) return false;
    p = star_p + 1;
    t = ++star_t;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace memscale
