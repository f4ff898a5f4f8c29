// In-place JSON scanning for the fork parent: validation, member lookup and size measures, no heap.
#include "common/json_scan.hpp"

#include <algorithm>
#include <cstdlib>

namespace spr::json_scan {

namespace {

constexpr std::size_t npos = std::string_view::npos;

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Index past the string token at `i` (s[i] == '"'), or npos when it is malformed.
std::size_t skip_string(std::string_view s, std::size_t i) {
  for (++i; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"') return i + 1;
    if (c < 0x20) return npos;
    if (c != '\\') continue;
    if (++i >= s.size()) return npos;
    switch (s[i]) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't':
        break;
      case 'u':
        if (i + 4 >= s.size()) return npos;
        for (int k = 1; k <= 4; ++k)
          if (hex(s[i + k]) < 0) return npos;
        i += 4;
        break;
      default:
        return npos;
    }
  }
  return npos;
}

std::size_t skip_number(std::string_view s, std::size_t i) {
  const std::size_t n = s.size();
  if (i < n && s[i] == '-') ++i;
  if (i >= n || !is_digit(s[i])) return npos;
  if (s[i] == '0') {
    ++i;
  } else {
    while (i < n && is_digit(s[i])) ++i;
  }
  if (i < n && s[i] == '.') {
    if (++i >= n || !is_digit(s[i])) return npos;
    while (i < n && is_digit(s[i])) ++i;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    if (++i < n && (s[i] == '+' || s[i] == '-')) ++i;
    if (i >= n || !is_digit(s[i])) return npos;
    while (i < n && is_digit(s[i])) ++i;
  }
  return i;
}

std::size_t skip_literal(std::string_view s, std::size_t i) {
  for (std::string_view lit : {std::string_view("true"), std::string_view("false"), std::string_view("null")})
    if (s.substr(i, lit.size()) == lit) return i + lit.size();
  return npos;
}

// A scalar (string, number, literal) at i, or npos.
std::size_t skip_scalar(std::string_view s, std::size_t i) {
  if (i >= s.size()) return npos;
  const char c = s[i];
  if (c == '"') return skip_string(s, i);
  if (c == '-' || is_digit(c)) return skip_number(s, i);
  return skip_literal(s, i);
}

// After '{' or ',' inside an object: the key, the colon, and whitespace up to the value.
std::size_t skip_key(std::string_view s, std::size_t i) {
  if (i >= s.size() || s[i] != '"') return npos;
  i = skip_string(s, i);
  if (i == npos) return npos;
  i = skip_ws(s, i);
  if (i >= s.size() || s[i] != ':') return npos;
  return skip_ws(s, i + 1);
}

}  // namespace

std::size_t skip_ws(std::string_view s, std::size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  return i;
}

std::size_t skip_value(std::string_view s, std::size_t i) {
  char open[kMaxDepth];  // the containers we are inside, innermost last
  int depth = 0;
  i = skip_ws(s, i);
  for (;;) {
    // Here a value starts at i.
    if (i >= s.size()) return npos;
    if (s[i] == '{' || s[i] == '[') {
      if (depth == kMaxDepth) return npos;
      const char c = s[i];
      open[depth++] = c;
      i = skip_ws(s, i + 1);
      if (i < s.size() && s[i] == (c == '{' ? '}' : ']')) {
        --depth;
        ++i;
      } else {
        if (c == '{' && (i = skip_key(s, i)) == npos) return npos;
        continue;  // the first element's value
      }
    } else if ((i = skip_scalar(s, i)) == npos) {
      return npos;
    }
    // A value ended at i: close containers until one continues with ','.
    for (;;) {
      if (depth == 0) return i;
      i = skip_ws(s, i);
      if (i >= s.size()) return npos;
      const char top = open[depth - 1];
      if (s[i] == (top == '{' ? '}' : ']')) {
        --depth;
        ++i;
        continue;
      }
      if (s[i] != ',') return npos;
      i = skip_ws(s, i + 1);
      if (top == '{' && (i = skip_key(s, i)) == npos) return npos;
      break;
    }
  }
}

bool valid(std::string_view text) {
  const std::size_t end = skip_value(text, 0);
  return end != npos && skip_ws(text, end) == text.size();
}

std::optional<std::string_view> member(std::string_view object, std::string_view key) {
  std::optional<std::string_view> found;
  for_each_member(object, [&](std::string_view k, std::string_view v) {
    if (k == key) found = v;
  });
  return found;
}

bool plain_members(std::string_view object) {
  std::string_view names[kMaxPlainMembers];
  std::size_t n = 0;
  bool plain = true;
  const bool is_object = for_each_member(object, [&](std::string_view k, std::string_view) {
    if (!plain) return;
    if (n == kMaxPlainMembers || k.find('\\') != std::string_view::npos ||
        std::find(names, names + n, k) != names + n) {
      plain = false;
      return;
    }
    names[n++] = k;
  });
  return is_object && plain;
}

std::uint64_t decoded_size(std::string_view t) {
  std::uint64_t n = 0;
  for (std::size_t i = 1; i + 1 < t.size(); ++i) {
    if (t[i] != '\\') {
      ++n;
      continue;
    }
    ++i;
    if (t[i] != 'u') {
      ++n;
      continue;
    }
    unsigned cp = 0;
    for (int k = 1; k <= 4 && i + k < t.size(); ++k) cp = cp * 16 + static_cast<unsigned>(hex(t[i + k]));
    i += 4;
    // A surrogate pair is 4 bytes in UTF-8: 2 for each half.
    n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : (cp >= 0xD800 && cp < 0xE000) ? 2 : 3;
  }
  return n;
}

std::uint64_t result_charge(std::string_view s) {
  // Walks the tokens of a valid value; containers cost 2, each array item 1, each member its key + 3.
  std::uint64_t charge = 0;
  char open[kMaxDepth];
  int depth = 0;
  bool expect_key = false;
  for (std::size_t i = skip_ws(s, 0); i < s.size(); i = skip_ws(s, i)) {
    const char c = s[i];
    if (c == '{' || c == '[') {
      if (depth == kMaxDepth) return charge;
      open[depth++] = c;
      charge += 2;
      expect_key = c == '{';
      ++i;
    } else if (c == '}' || c == ']') {
      if (depth > 0) --depth;
      ++i;
    } else if (c == ',') {
      if (depth > 0 && open[depth - 1] == '[') charge += 1;
      expect_key = depth > 0 && open[depth - 1] == '{';
      ++i;
    } else if (c == ':') {
      ++i;
    } else {
      const std::size_t end = skip_scalar(s, i);
      if (end == npos) return charge;
      const std::string_view tok = s.substr(i, end - i);
      if (c == '"') {
        charge += decoded_size(tok) + (expect_key ? 3 : 2);
      } else if (c == 't' || c == 'f' || c == 'n') {
        charge += tok.size();
      } else {
        // A number costs what the engine charges for it whatever its spelling (20 for an integer, 24 for a
        // float: "1e15" comes back as 1000000000000000.0), or its text when longer.
        const bool is_float = tok.find_first_of(".eE") != std::string_view::npos;
        charge += std::max<std::uint64_t>(tok.size(), is_float ? 24 : 20);
      }
      expect_key = false;
      i = end;
    }
  }
  return charge;
}

std::optional<double> number(std::string_view v) {
  if (v.empty() || skip_number(v, 0) != v.size() || v.size() > 64) return std::nullopt;
  char buf[65];
  v.copy(buf, v.size());
  buf[v.size()] = '\0';
  return std::strtod(buf, nullptr);
}

namespace {
// The code unit of the \u escape whose 'u' is at s[i], or -1.
int escape_unit(std::string_view s, std::size_t i) {
  if (i + 4 >= s.size() || s[i] != 'u') return -1;
  int v = 0;
  for (std::size_t k = i + 1; k <= i + 4; ++k) {
    const int d = hex(s[k]);
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}
}  // namespace

bool surrogates_paired(std::string_view s) {
  bool in_string = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (!in_string) {
      in_string = c == '"';
      continue;
    }
    if (c == '"') {
      in_string = false;
    } else if (c == '\\') {
      const int u = escape_unit(s, ++i);
      if (u < 0) continue;  // another escape: its character is skipped with it
      i += 4;
      if (u >= 0xDC00 && u <= 0xDFFF) return false;
      if (u >= 0xD800 && u <= 0xDBFF) {
        if (i + 1 >= s.size() || s[i + 1] != '\\') return false;
        const int low = escape_unit(s, i + 2);
        if (low < 0xDC00 || low > 0xDFFF) return false;
        i += 6;
      }
    }
  }
  return true;
}

std::optional<std::uint64_t> id_number(std::string_view text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  std::uint64_t v = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

}  // namespace spr::json_scan
