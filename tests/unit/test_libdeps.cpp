// The library scan (embed/engine/libdeps.cpp): which extension modules under the roots it finds, and so which
// shared libraries a worker's Landlock domain and own root let the loader read. A tree built from copies of
// the standard library's extension modules, each needing a library no other one here needs.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "engine/libdeps.hpp"

namespace fs = std::filesystem;

namespace {

const fs::path kDynload = "/usr/lib/python3.11/lib-dynload";

fs::path module(const std::string& name) {
  const fs::path p = kDynload / (name + ".cpython-311-x86_64-linux-gnu.so");
  INFO(p.string() << " is part of Debian's libpython3.11-stdlib");
  REQUIRE(fs::exists(p));
  return p;
}

bool has_library(const std::vector<std::string>& libs, const std::string& soname_prefix) {
  return std::any_of(libs.begin(), libs.end(), [&](const std::string& l) {
    return fs::path(l).filename().string().rfind(soname_prefix, 0) == 0;
  });
}

struct TempTree {
  fs::path root, outside;
  TempTree() {
    const std::string tag = std::to_string(::getpid());
    root = fs::temp_directory_path() / ("spr-libdeps-" + tag);
    outside = fs::temp_directory_path() / ("spr-libdeps-outside-" + tag);
    fs::remove_all(root);
    fs::remove_all(outside);
    fs::create_directories(root);
    fs::create_directories(outside);
  }
  ~TempTree() {
    std::error_code ec;
    fs::remove_all(root, ec);
    fs::remove_all(outside, ec);
  }
};

}  // namespace

TEST_CASE("libdeps: the libraries of the extension modules the loader would find under the roots, and no others") {
  TempTree t;
  // Found: a module in a package, a link to a module file, a module 12 directories down.
  fs::create_directories(t.root / "pkg" / "sub");
  fs::copy_file(module("_ssl"), t.root / "pkg" / "sub" / "_ssl.so");
  fs::copy_file(module("_sqlite3"), t.outside / "_sqlite3.so");
  fs::create_symlink(t.outside / "_sqlite3.so", t.root / "linked_sqlite3.so");
  fs::path deep = t.root;
  for (int i = 1; i <= 12; ++i) deep /= "d" + std::to_string(i);
  fs::create_directories(deep);
  fs::copy_file(module("_curses"), deep / "_curses.cpython-311-x86_64-linux-gnu.so.1");
  // Not found: bytecode caches, directories reached through a link, anything deeper.
  fs::create_directories(t.root / "pkg" / "__pycache__");
  fs::copy_file(module("_bz2"), t.root / "pkg" / "__pycache__" / "_bz2.so");
  fs::create_directories(t.outside / "dir");
  fs::copy_file(module("_lzma"), t.outside / "dir" / "_lzma.so");
  fs::create_directory_symlink(t.outside / "dir", t.root / "linked_dir");
  fs::create_directories(deep / "d13");
  fs::copy_file(module("_uuid"), deep / "d13" / "_uuid.so");

  const std::vector<std::string> libs = spr::embed::libdeps::needed_by_extensions({t.root.string()});
  CAPTURE(libs);
  CHECK(has_library(libs, "libssl.so"));
  CHECK(has_library(libs, "libcrypto.so"));  // libssl's own need: the closure, not one level
  CHECK(has_library(libs, "libsqlite3.so"));
  CHECK(has_library(libs, "libncursesw.so"));
  CHECK(has_library(libs, "libtinfo.so"));
  CHECK_FALSE(has_library(libs, "libbz2.so"));
  CHECK_FALSE(has_library(libs, "liblzma.so"));
  CHECK_FALSE(has_library(libs, "libuuid.so"));
  // Real paths, sorted, each once.
  CHECK(std::is_sorted(libs.begin(), libs.end()));
  CHECK(std::adjacent_find(libs.begin(), libs.end()) == libs.end());
  for (const auto& l : libs) CHECK(fs::canonical(l).string() == l);
}

// Red team round 12: the scan runs before the sandbox with the supervisor's rights, and a module in a venv the
// caller names may give any path as a library it needs: a FIFO blocked the worker's start (and, opened, made its
// writer die of SIGPIPE), and a text file was bound into the run's view. A path named is listed only when it is a
// 64-bit ELF file, and nothing that is not a regular file is opened.
TEST_CASE("libdeps: a path a module names as its library is listed only when it is an ELF file") {
  TempTree t;
  const std::string tag = std::to_string(::getpid() % 1000000);
  const std::string fifo = "/tmp/s" + std::string(6 - tag.size(), '0') + tag;  // 12 bytes, as "libuuid.so.1"
  const std::string text = "/tmp/t" + std::string(6 - tag.size(), '0') + tag;
  REQUIRE(fifo.size() == 12);
  ::unlink(fifo.c_str());
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  { std::ofstream(text) << "not a library\n"; }
  // Copies of _uuid whose one library name is replaced, in place, by each path.
  std::ifstream in(module("_uuid"), std::ios::binary);
  const std::string image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string needed = std::string("libuuid.so.1") + '\0';
  REQUIRE(image.find(needed) != std::string::npos);
  for (const auto& [file, path] : {std::pair{"fifo_user.so", fifo}, std::pair{"text_user.so", text}}) {
    std::string patched = image;
    for (auto at = patched.find(needed); at != std::string::npos; at = patched.find(needed, at + 1))
      patched.replace(at, needed.size(), path + '\0');
    std::ofstream(t.root / file, std::ios::binary) << patched;
  }
  auto scan = std::async(std::launch::async, [&] { return spr::embed::libdeps::needed_by_extensions({t.root.string()}); });
  const bool finished = scan.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  if (!finished) {
    const int unblock = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // let the scan's open return
    if (unblock >= 0) ::close(unblock);
  }
  const std::vector<std::string> libs = scan.get();
  ::unlink(fifo.c_str());
  ::unlink(text.c_str());
  CHECK(finished);
  CAPTURE(libs);
  CHECK(std::find(libs.begin(), libs.end(), fifo) == libs.end());
  CHECK(std::find(libs.begin(), libs.end(), text) == libs.end());
}

// The scan's answer kept between worker starts (libdeps_cache.cpp). The tests keep an answer however new the
// files it looked at (a window of 0 s), but the one about that window.
namespace {

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct CachedTree {
  TempTree t;
  fs::path cache;
  fs::path kept;  // the one cache file, once written
  CachedTree() {
    cache = fs::temp_directory_path() / ("spr-libdeps-cache-" + std::to_string(::getpid()));
    fs::remove_all(cache);
    fs::create_directories(t.root / "pkg");
    fs::copy_file(module("_ssl"), t.root / "pkg" / "_ssl.so");
  }
  ~CachedTree() {
    std::error_code ec;
    fs::remove_all(cache, ec);
  }
  std::vector<std::string> scan(double racy_seconds = 0) const {
    return spr::embed::libdeps::needed_by_extensions_cached({t.root.string()}, cache.string(), racy_seconds);
  }
  std::size_t files() const { return static_cast<std::size_t>(std::distance(fs::directory_iterator(cache), {})); }
  // The cache file, with a library no scan would list added to its answer: seen in a result, it came from the file.
  fs::path plant_marker() {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(cache)) files.push_back(e.path());
    REQUIRE(files.size() == 1);
    const std::string text = read(files[0]);
    REQUIRE(text.size() > 4);
    REQUIRE(text.substr(text.size() - 4) == "end\n");
    std::ofstream(files[0], std::ios::binary | std::ios::trunc)
        << text.substr(0, text.size() - 4) << "O /nonexistent/libmarker.so\nend\n";
    return files[0];
  }
};

bool has_marker(const std::vector<std::string>& libs) {
  return std::find(libs.begin(), libs.end(), "/nonexistent/libmarker.so") != libs.end();
}

}  // namespace

TEST_CASE("libdeps cache: the answer is kept, reused while nothing changed, and found again when a file changes") {
  CachedTree c;
  const auto first = c.scan();
  CHECK(has_library(first, "libssl.so"));
  struct stat st{};
  REQUIRE(::stat(c.cache.c_str(), &st) == 0);
  CHECK((st.st_mode & 077) == 0);  // made private
  c.plant_marker();
  CHECK(has_marker(c.scan()));  // reused: the answer came from the file

  SUBCASE("a module added to the tree") {
    fs::copy_file(module("_sqlite3"), c.t.root / "pkg" / "_sqlite3.so");
    const auto libs = c.scan();
    CHECK_FALSE(has_marker(libs));
    CHECK(has_library(libs, "libsqlite3.so"));
  }
  SUBCASE("a module rewritten in place, under the same name") {
    fs::copy_file(module("_uuid"), c.t.root / "pkg" / "_ssl.so", fs::copy_options::overwrite_existing);
    const auto libs = c.scan();
    CHECK_FALSE(has_marker(libs));
    CHECK(has_library(libs, "libuuid.so"));
    CHECK_FALSE(has_library(libs, "libssl.so"));
  }
  SUBCASE("a module removed") {
    fs::remove(c.t.root / "pkg" / "_ssl.so");
    const auto libs = c.scan();
    CHECK_FALSE(has_marker(libs));
    CHECK_FALSE(has_library(libs, "libssl.so"));
  }
  SUBCASE("other roots use a file of their own") {
    const auto libs = spr::embed::libdeps::needed_by_extensions_cached({c.t.outside.string()}, c.cache.string(), 0);
    CHECK_FALSE(has_marker(libs));
    CHECK(c.files() == 2);
  }
}

// The file decides which host files a run may read: one that others could have written is not believed.
TEST_CASE("libdeps cache: a file or directory others may write, a link, or a malformed file is not used") {
  CachedTree c;
  c.scan();
  const fs::path file = c.plant_marker();
  REQUIRE(has_marker(c.scan()));
  SUBCASE("the file writable by others") {
    REQUIRE(::chmod(file.c_str(), 0622) == 0);
    CHECK_FALSE(has_marker(c.scan()));
  }
  SUBCASE("the directory writable by its group") {
    REQUIRE(::chmod(c.cache.c_str(), 0770) == 0);
    CHECK_FALSE(has_marker(c.scan()));
    CHECK(read(file).find("libmarker") != std::string::npos);  // not written anew there
    CHECK(c.files() == 1);
  }
  SUBCASE("the file owned by another user") {
    if (::geteuid() == 0) {
      REQUIRE(::chown(file.c_str(), 65534, 65534) == 0);
      CHECK_FALSE(has_marker(c.scan()));
    }
  }
  SUBCASE("the file a link to a file with the same text") {
    const fs::path elsewhere = c.t.outside / "kept";
    fs::copy_file(file, elsewhere);
    fs::remove(file);
    fs::create_symlink(elsewhere, file);
    CHECK_FALSE(has_marker(c.scan()));
  }
  SUBCASE("a line that does not parse") {
    const std::string text = read(file);
    std::ofstream(file, std::ios::binary | std::ios::trunc) << "X what is this\n" << text;
    CHECK_FALSE(has_marker(c.scan()));
    CHECK(has_library(c.scan(), "libssl.so"));  // scanned again, and written again whole
  }
  SUBCASE("a file cut short at the end of a line") {
    const std::string text = read(file);
    std::ofstream(file, std::ios::binary | std::ios::trunc) << text.substr(0, text.size() - 4);
    CHECK_FALSE(has_marker(c.scan()));
  }
  SUBCASE("text after its end") {
    std::ofstream(file, std::ios::app) << "O /nonexistent/libother.so\n";
    CHECK_FALSE(has_marker(c.scan()));
  }
}

TEST_CASE("libdeps cache: a tree changed within the last two seconds is scanned again at the next start") {
  CachedTree c;
  fs::copy_file(module("_sqlite3"), c.t.root / "pkg" / "_sqlite3.so");  // just now
  CHECK(has_library(c.scan(2.0), "libsqlite3.so"));
  CHECK(c.files() == 0);  // not kept: a change in the same clock tick would not show in the times
  CHECK(spr::embed::libdeps::needed_by_extensions_cached({c.t.root.string()}, "").size() > 0);  // "": no cache
}

// Red team round 17: a module that links to its file through a directory link ("current" -> a release), and the
// link switched to another release: no file the scan stat'ed changed, but its answer did.
TEST_CASE("libdeps cache: a directory link on the way to a module, switched, is seen") {
  CachedTree c;
  fs::create_directories(c.t.outside / "rel1");
  fs::create_directories(c.t.outside / "rel2");
  fs::copy_file(module("_sqlite3"), c.t.outside / "rel1" / "ext.so");
  fs::copy_file(module("_uuid"), c.t.outside / "rel2" / "ext.so");
  fs::create_directory_symlink(c.t.outside / "rel1", c.t.outside / "current");
  fs::create_symlink(c.t.outside / "current" / "ext.so", c.t.root / "ext.so");
  REQUIRE(has_library(c.scan(), "libsqlite3.so"));
  c.plant_marker();
  REQUIRE(has_marker(c.scan()));
  fs::remove(c.t.outside / "current");
  fs::create_directory_symlink(c.t.outside / "rel2", c.t.outside / "current");
  const auto libs = c.scan();
  CHECK_FALSE(has_marker(libs));
  CHECK(has_library(libs, "libuuid.so"));
  CHECK_FALSE(has_library(libs, "libsqlite3.so"));
}

// Red team round 17: a cache directory named through a link (another user's, in a shared /tmp) is not used, and
// nothing is made where the link points.
TEST_CASE("libdeps cache: a cache directory reached through a link is not used, and nothing is made behind it") {
  TempTree t;
  const fs::path target = t.outside / "elsewhere";
  fs::create_directories(target);
  fs::create_directory_symlink(target, t.root / "link");
  const auto libs = spr::embed::libdeps::needed_by_extensions_cached({t.root.string()}, (t.root / "link" / "cache").string(), 0);
  CHECK(fs::is_empty(target));
  (void)libs;
}

// A service user's HOME may not exist (`nobody`'s is /nonexistent): it is not made. Only the cache's last two
// steps are (HOME/.cache/safe-py-runner, XDG_CACHE_HOME/safe-py-runner).
TEST_CASE("libdeps cache: a missing HOME is not made; the two steps below an existing one are") {
  TempTree t;
  const fs::path home = t.outside / "home";
  const fs::path cache = home / ".cache" / "safe-py-runner";
  const auto without = spr::embed::libdeps::needed_by_extensions_cached({t.root.string()}, cache.string(), 0);
  CHECK_FALSE(fs::exists(home));
  fs::create_directory(home);
  const auto with = spr::embed::libdeps::needed_by_extensions_cached({t.root.string()}, cache.string(), 0);
  CHECK(fs::is_directory(cache));
  CHECK(with == without);  // the answer does not depend on the cache
}
