// Standalone driver for the fuzz targets when libFuzzer is not available (the g++ build).
// Runs LLVMFuzzerTestOneInput over every file of the given corpus directories (or files), then over
// pseudo-random mutations of them from a fixed seed, until -runs or -max_total_time is reached.
// Flags use libFuzzer's spelling:
//   -runs=N            mutated inputs to run after the corpus (default 20000)
//   -max_total_time=S  stop mutating after S seconds (default 5)
//   -seed=N            mutation seed (default 1): the same seed gives the same inputs
//   -max_len=N         longest mutated input (default 4096)
// A crash is an abort/signal of this process; the input being run is written to
// ./standalone-crash-input first, so the failing case can be replayed with: <target> <that file>.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

const char* kCrashFile = "standalone-crash-input";
const Bytes* g_current = nullptr;

// Saves the input being run when the target aborts or faults, then lets the signal kill us.
extern "C" void on_fatal(int sig) {
  if (g_current != nullptr) {
    if (FILE* f = std::fopen(kCrashFile, "wb")) {
      std::fwrite(g_current->data(), 1, g_current->size(), f);
      std::fclose(f);
      std::fprintf(stderr, "standalone: crashing input (%zu bytes) saved to %s\n", g_current->size(), kCrashFile);
    }
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void run_one(const Bytes& input) {
  g_current = &input;
  // Copy into an exactly-sized buffer, as libFuzzer does, so overreads are visible to ASan.
  std::unique_ptr<std::uint8_t[]> buf(new std::uint8_t[input.empty() ? 1 : input.size()]);
  if (!input.empty()) std::memcpy(buf.get(), input.data(), input.size());
  LLVMFuzzerTestOneInput(buf.get(), input.size());
  g_current = nullptr;
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Tokens that tend to matter to JSON, TOML and the frame header.
const std::vector<std::string>& tokens() {
  static const std::vector<std::string> t = {
      "{", "}", "[", "]", "\"", ":", ",", "=", "\n", "[policy]", "[[a]]", "\\u0000", "\\ud800", "\xff", "\xc3\xa9",
      "\xf0\x9f\x98\x80", "1e308", "-0", "1.5", "18446744073709551615", "9223372036854775808", "nan", "inf", "true",
      "null", "\"mode\"", "\"policy\"", "\"timeout_seconds\"", "\"memory_limit_mb\"", "\"extra_globals\"",
      "\"isolation\"", "\"exit_code\"", "\"ok\"", "\"error_kind\"", "mode", "timeout_seconds", "extra_globals",
      "1979-05-27T07:32:00Z", "'''", "\"\"\"", std::string("\x00\x00\x00\x00", 4), std::string("\xff\xff\xff\xff", 4),
      std::string("\x10\x00\x00\x00", 4), std::string("\x00\x10\x00\x00", 4)};
  return t;
}

Bytes mutate(const Bytes& base, const std::vector<Bytes>& corpus, std::mt19937_64& rng, std::size_t max_len) {
  Bytes b = base;
  auto pick = [&rng](std::size_t n) { return n == 0 ? std::size_t{0} : static_cast<std::size_t>(rng() % n); };
  const std::size_t steps = 1 + pick(4);
  for (std::size_t i = 0; i < steps; ++i) {
    switch (pick(9)) {
      case 0:  // flip a bit
        if (!b.empty()) b[pick(b.size())] ^= static_cast<std::uint8_t>(1u << pick(8));
        break;
      case 1:  // random byte
        if (!b.empty()) b[pick(b.size())] = static_cast<std::uint8_t>(rng());
        break;
      case 2:  // insert a random byte
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(pick(b.size() + 1)), static_cast<std::uint8_t>(rng()));
        break;
      case 3: {  // erase a range
        if (b.empty()) break;
        std::size_t at = pick(b.size());
        std::size_t n = 1 + pick(std::min<std::size_t>(16, b.size() - at));
        b.erase(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      case 4: {  // duplicate a range
        if (b.empty()) break;
        std::size_t at = pick(b.size());
        std::size_t n = 1 + pick(std::min<std::size_t>(64, b.size() - at));
        Bytes chunk(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + n));
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(pick(b.size() + 1)), chunk.begin(), chunk.end());
        break;
      }
      case 5: {  // insert a token
        const std::string& t = tokens()[pick(tokens().size())];
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(pick(b.size() + 1)), t.begin(), t.end());
        break;
      }
      case 6: {  // splice: our head, another input's tail
        const Bytes& other = corpus[pick(corpus.size())];
        std::size_t cut = pick(b.size() + 1);
        std::size_t from = pick(other.size() + 1);
        b.resize(cut);
        b.insert(b.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
        break;
      }
      case 7:  // truncate
        b.resize(pick(b.size() + 1));
        break;
      default: {  // overwrite a 4-byte little-endian length (the frame header) with an edge value
        static const std::uint32_t edges[] = {0, 1, 3, 4, 255, 4095, 4096, 4097, 65536, 0x7fffffff, 0xffffffff};
        std::uint32_t v = edges[pick(std::size(edges))];
        if (rng() % 2 == 0) v = static_cast<std::uint32_t>(b.size() > 4 ? b.size() - 4 : 0);
        std::size_t at = b.size() >= 4 ? pick(b.size() - 3) : 0;
        if (b.size() < 4) b.resize(4);
        for (int k = 0; k < 4; ++k) b[at + static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(v >> (8 * k));
        break;
      }
    }
  }
  if (b.size() > max_len) b.resize(max_len);
  return b;
}

bool flag(const char* arg, const char* name, long long& out) {
  const std::size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  out = std::atoll(arg + n + 1);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  long long runs = 20000;
  long long max_time = 5;
  long long seed = 1;
  long long max_len = 4096;
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    if (flag(argv[i], "-runs", runs) || flag(argv[i], "-max_total_time", max_time) || flag(argv[i], "-seed", seed) ||
        flag(argv[i], "-max_len", max_len))
      continue;
    if (argv[i][0] == '-') {
      std::fprintf(stderr, "standalone: unknown flag %s\n", argv[i]);
      return 2;
    }
    inputs.emplace_back(argv[i]);
  }

  std::vector<Bytes> corpus;
  for (const auto& p : inputs) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());  // a fixed order keeps the mutations reproducible
      for (const auto& f : files) corpus.push_back(read_file(f));
    } else if (fs::is_regular_file(p, ec)) {
      corpus.push_back(read_file(p));
    } else {
      std::fprintf(stderr, "standalone: no such file or directory: %s\n", p.c_str());
      return 2;
    }
  }

  std::signal(SIGABRT, on_fatal);
  std::signal(SIGSEGV, on_fatal);
  std::signal(SIGBUS, on_fatal);
  std::signal(SIGFPE, on_fatal);
  std::signal(SIGILL, on_fatal);

  const auto start = std::chrono::steady_clock::now();
  const std::size_t seeds = corpus.size();
  for (const auto& c : corpus) run_one(c);
  if (corpus.empty()) corpus.emplace_back();

  std::mt19937_64 rng(static_cast<std::uint64_t>(seed));
  long long done = 0;
  const auto end = start + std::chrono::seconds(max_time);
  for (; done < runs; ++done) {
    if ((done & 63) == 0 && std::chrono::steady_clock::now() >= end) break;
    const Bytes& base = corpus[static_cast<std::size_t>(rng() % corpus.size())];
    run_one(mutate(base, corpus, rng, static_cast<std::size_t>(max_len)));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("standalone: %zu corpus inputs, %lld mutated inputs (seed %lld) in %.2f s: no crash\n",
              seeds, done, seed, secs);
  return 0;
}
