// Files in and out of a run: which names and patterns are allowed, and their JSON form (text or base64).
#include "common/run_files.hpp"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "common/fd.hpp"
#include "common/outcome.hpp"

namespace spr::detail::run_files {

namespace {

std::string check_path(std::string_view s, const char* what) {
  if (s.empty()) return std::string(what) + " is empty";
  if (s.size() > kMaxNameBytes) return std::string(what) + " is longer than " + std::to_string(kMaxNameBytes) + " bytes";
  if (s.find('\0') != std::string_view::npos) return std::string(what) + " contains a NUL byte";
  if (s.front() == '/') return std::string(what) + " is an absolute path (names are relative to the run directory)";
  std::size_t parts = 0;
  for (std::size_t start = 0; start <= s.size();) {
    std::size_t end = s.find('/', start);
    if (end == std::string_view::npos) end = s.size();
    const std::string_view part = s.substr(start, end - start);
    if (part.empty()) return std::string(what) + " has an empty component ('//' or a trailing '/')";
    if (part == "." || part == "..") return std::string(what) + " has a '" + std::string(part) + "' component";
    if (part.size() > kMaxComponentBytes)
      return std::string(what) + " has a component longer than " + std::to_string(kMaxComponentBytes) + " bytes";
    if (++parts > kMaxDepth) return std::string(what) + " is deeper than " + std::to_string(kMaxDepth) + " components";
    start = end + 1;
  }
  return {};
}

// A name is shown in a message as far as it is printable and short.
std::string shown(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  return s.size() > 80 ? out + "..." : out;
}

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

std::string check_name(std::string_view name) { return check_path(name, "the name"); }
std::string check_pattern(std::string_view pattern) { return check_path(pattern, "the pattern"); }

std::string check_request(const Files& files, const std::vector<std::string>& collect, std::size_t max_total_bytes) {
  if (files.size() > kMaxFiles) return "more than " + std::to_string(kMaxFiles) + " files";
  if (collect.size() > kMaxPatterns) return "more than " + std::to_string(kMaxPatterns) + " collect patterns";
  std::size_t total = 0;
  for (const auto& [name, content] : files) {
    if (std::string why = check_name(name); !why.empty()) return "file '" + shown(name) + "': " + why;
    total += content.size();
  }
  // A name that is both a file and a directory of another ("a" and "a/b") cannot be written.
  for (auto it = files.begin(); it != files.end(); ++it) {
    auto next = std::next(it);
    if (next != files.end() && next->first.size() > it->first.size() &&
        next->first.compare(0, it->first.size(), it->first) == 0 && next->first[it->first.size()] == '/')
      return "file '" + shown(it->first) + "' is also a directory of '" + shown(next->first) + "'";
  }
  if (total > max_total_bytes)
    return "the files hold " + std::to_string(total) + " bytes, more than the run directory's file system (" +
           std::to_string(max_total_bytes >> 20) + " MB, scratch_limit_mb)";
  for (const auto& p : collect)
    if (std::string why = check_pattern(p); !why.empty()) return "collect '" + shown(p) + "': " + why;
  return {};
}

bool matches(const std::vector<std::string>& patterns, const std::string& name) {
  // FNM_PERIOD with FNM_PATHNAME: a component's leading dot is matched only by a dot in the pattern, as in
  // the shell, so `*` or `*/*` never brings back `.bashrc` or `.git/config` a run chose to leave.
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) {
    return fnmatch(p.c_str(), name.c_str(), FNM_PATHNAME | FNM_PERIOD) == 0;
  });
}

std::size_t depth(const std::vector<std::string>& patterns) {
  std::size_t deepest = 0;
  for (const auto& p : patterns) deepest = std::max<std::size_t>(deepest, std::count(p.begin(), p.end(), '/') + 1);
  return deepest;
}

std::string write_files(int dir_fd, const Files& files, bool replace, const std::string& where, int* err) {
  const auto failed = [&](const std::string& name, const char* call, int e) {
    if (err) *err = e;
    return "cannot write '" + shown(name) + "' into " + where + " (" + call + ": " + std::strerror(e) + ")";
  };
  for (const auto& [name, content] : files) {
    if (std::string why = check_name(name); !why.empty()) return "file '" + shown(name) + "': " + why;
    Fd parent(::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0));
    if (!parent) return failed(name, "dup", errno);
    std::size_t start = 0;
    for (std::size_t slash; (slash = name.find('/', start)) != std::string::npos; start = slash + 1) {
      const std::string part = name.substr(start, slash - start);
      if (::mkdirat(parent.get(), part.c_str(), 0700) != 0 && errno != EEXIST) return failed(name, "mkdirat", errno);
      Fd sub(::openat(parent.get(), part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub) return failed(name, "openat", errno);
      parent = std::move(sub);
    }
    const std::string last = name.substr(start);
    const int how = O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | (replace ? O_TRUNC : O_EXCL);
    Fd out(retry_eintr([&] { return ::openat(parent.get(), last.c_str(), how, 0600); }));
    if (!out) return failed(name, "openat", errno);
    struct stat st;
    // O_NOFOLLOW refuses a link, O_NONBLOCK a FIFO without a reader; any other non-file is refused here.
    if (::fstat(out.get(), &st) != 0 || !S_ISREG(st.st_mode)) return failed(name, "fstat", errno ? errno : EINVAL);
    for (std::size_t done = 0; done < content.size();) {
      const ssize_t n = retry_eintr([&] { return ::write(out.get(), content.data() + done, content.size() - done); });
      if (n <= 0) return failed(name, "write", n < 0 ? errno : EIO);
      done += static_cast<std::size_t>(n);
    }
  }
  return {};
}

json to_json(const Files& files) {
  json j = json::object();
  for (const auto& [name, content] : files)
    j[name] = valid_utf8(content) ? json(content) : json{{"base64", base64_encode(content)}};
  return j;
}

Files from_json(const json& j, std::string_view what) {
  const std::string w(what);
  if (!j.is_object()) throw std::invalid_argument("'" + w + "' must be an object of name -> content");
  if (j.size() > kMaxFiles) throw std::invalid_argument("'" + w + "' holds more than " + std::to_string(kMaxFiles) + " files");
  Files out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (std::string why = check_name(it.key()); !why.empty())
      throw std::invalid_argument("'" + w + "': file '" + shown(it.key()) + "': " + why);
    const json& v = it.value();
    if (v.is_string()) {
      out[it.key()] = v.get<std::string>();
    } else if (v.is_object() && v.size() == 1 && v.contains("base64") && v["base64"].is_string()) {
      if (!base64_decode(v["base64"].get_ref<const std::string&>(), out[it.key()]))
        throw std::invalid_argument("'" + w + "': file '" + shown(it.key()) + "': invalid base64");
    } else {
      throw std::invalid_argument("'" + w + "': file '" + shown(it.key()) +
                                  "' must be a string or {\"base64\": \"...\"}");
    }
  }
  return out;
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (const std::size_t rest = bytes.size() - i; rest > 0) {
    unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

bool base64_decode(std::string_view text, std::string& out) {
  static const std::array<signed char, 256> kValue = [] {
    std::array<signed char, 256> t{};
    t.fill(-1);
    for (int k = 0; k < 64; ++k) t[static_cast<unsigned char>(kAlphabet[k])] = static_cast<signed char>(k);
    return t;
  }();
  out.clear();
  if (text.size() % 4 != 0) return false;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    const int pad = last ? (text[i + 3] == '=') + (text[i + 2] == '=') : 0;
    if (pad == 1 && text[i + 2] == '=') return false;  // "x=y=" is not padding
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const int c = k >= 4 - pad ? 0 : kValue[static_cast<unsigned char>(text[i + k])];
      if (c < 0) return false;
      v = (v << 6) | static_cast<unsigned>(c);
    }
    // Canonical form only: the bits the padding drops must be zero, so one text means one content.
    if ((pad == 1 && (v & 0xFF) != 0) || (pad == 2 && (v & 0xFFFF) != 0)) return false;
    out += static_cast<char>((v >> 16) & 0xFF);
    if (pad < 2) out += static_cast<char>((v >> 8) & 0xFF);
    if (pad < 1) out += static_cast<char>(v & 0xFF);
  }
  return true;
}

}  // namespace spr::detail::run_files
