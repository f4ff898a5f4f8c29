// Batch evaluation: cases run on a Runner, answers written in input order through a bounded reorder buffer.
#include "detail/batch.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "common/fd.hpp"
#include "common/frame.hpp"
#include "common/outcome.hpp"
#include "detail/json_cost.hpp"
#include "detail/request_line.hpp"
#include "detail/runner_access.hpp"

namespace spr::detail {

namespace {

using Clock = std::chrono::steady_clock;

std::string_view rstrip(std::string_view s) {
  const auto end = s.find_last_not_of(" \t\r\f\v");
  return end == std::string_view::npos ? std::string_view() : s.substr(0, end + 1);
}

// The lines of `s` with trailing whitespace removed, trailing blank lines dropped.
std::vector<std::string_view> normalised_lines(std::string_view s) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start <= s.size()) {
    const auto nl = s.find('\n', start);
    const auto end = nl == std::string_view::npos ? s.size() : nl;
    lines.push_back(rstrip(s.substr(start, end - start)));
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// Two independent 64-bit FNV-1a style digests of the id's JSON text: ids are told apart without
// keeping them (a collision of both would need ~2^64 ids).
CaseIndex::Key key_of(const json& id) {
  const std::string text = dump_json(id);
  std::uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull;
  for (unsigned char c : text) {
    a = (a ^ c) * 0x100000001b3ull;
    b = (b ^ c) * 0x9e3779b97f4a7c15ull;
    b ^= b >> 29;
  }
  return {a, b};
}

// A case id is a JSON scalar other than null.
// A case line times its repeats, held at once by the runs in flight.
constexpr std::size_t kMaxRepeatedBytes = 64u << 20;

bool usable_id(const json& id) {
  return !id.is_null() && !id.is_object() && !id.is_array();
}

// The id of a case line, when it has a usable one.
// Read by a pass that builds no tree (a case line may be costly to parse; this runs for every line first).
std::optional<json> line_id(std::string_view line) {
  const RequestCost c = measure_request(line, cost_budget(line.size()));
  if (c.malformed || c.over || !usable_id(c.id) || !id_error(c.id).empty()) return std::nullopt;
  return c.id;
}

// Durations in buckets 2% wide from 1 µs to beyond an hour: percentiles in constant memory.
class Histogram {
 public:
  void add(double ms) {
    const double us = std::max(ms * 1000.0, 1.0);
    const auto b = static_cast<std::size_t>(std::log(us) / kLogStep);
    ++counts_[std::min(b, counts_.size() - 1)];
    ++n_;
  }
  double percentile(double q) const {
    if (n_ == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(n_)));
    std::uint64_t seen = 0;
    for (std::size_t b = 0; b < counts_.size(); ++b) {
      seen += counts_[b];
      if (seen >= std::max<std::uint64_t>(rank, 1)) return std::exp((static_cast<double>(b) + 0.5) * kLogStep) / 1000.0;
    }
    return 0;
  }

 private:
  static constexpr double kLogStep = 0.0198026;  // ln(1.02)
  std::array<std::uint64_t, 1200> counts_{};
  std::uint64_t n_ = 0;
};

std::string format_ms(double ms) {
  char buf[32];
  if (ms >= 100)
    std::snprintf(buf, sizeof buf, "%.0f ms", ms);
  else if (ms >= 1)
    std::snprintf(buf, sizeof buf, "%.1f ms", ms);
  else
    std::snprintf(buf, sizeof buf, "%.2f ms", ms);
  return buf;
}

}  // namespace

bool stdout_matches(std::string_view actual, std::string_view expected) {
  return normalised_lines(actual) == normalised_lines(expected);
}

// --- CaseIndex ------------------------------------------------------------------------------------

CaseIndex CaseIndex::scan(std::istream& in) {
  CaseIndex index;
  std::vector<std::size_t> line_of;  // physical line number of each position, for the duplicate message
  std::string line;
  bool too_long = false;
  std::size_t lineno = 0;
  while (read_request_line(in, line, too_long)) {
    ++lineno;
    if (!too_long && blank_line(line)) continue;
    std::optional<json> id = too_long ? std::nullopt : line_id(line);
    if (id) index.sorted_.emplace_back(key_of(*id), index.no_id_.size());
    index.no_id_.push_back(!id);
    line_of.push_back(lineno);
  }
  std::sort(index.sorted_.begin(), index.sorted_.end());
  for (std::size_t i = 1; i < index.sorted_.size(); ++i)
    if (index.sorted_[i].first == index.sorted_[i - 1].first) {
      const std::size_t a = index.sorted_[i - 1].second, b = index.sorted_[i].second;
      throw BatchInputError("duplicate id: lines " + std::to_string(line_of[std::min(a, b)]) + " and " +
                            std::to_string(line_of[std::max(a, b)]) + " have the same id");
    }
  return index;
}

std::optional<std::size_t> CaseIndex::find(const json& id) const {
  if (!usable_id(id)) return std::nullopt;
  const Key key = key_of(id);
  auto it = std::lower_bound(sorted_.begin(), sorted_.end(), std::make_pair(key, std::size_t{0}));
  if (it == sorted_.end() || !(it->first == key)) return std::nullopt;
  return it->second;
}

bool CaseIndex::without_id(std::size_t pos) const {
  return pos < no_id_.size() && no_id_[pos];
}

// --- summary --------------------------------------------------------------------------------------

json BatchSummary::to_json() const {
  return {{"total", total},
          {"cases", cases},
          {"passed", passed},
          {"failed", failed},
          {"bad_input", bad_input},
          {"timeouts", timeouts},
          {"memory", memory},
          {"wrong_output", wrong_output},
          {"flaky", flaky},
          {"skipped", skipped},
          {"runs", runs},
          {"error_kinds", error_kinds},
          {"duration_ms", {{"p50", p50_ms}, {"p99", p99_ms}}},
          {"wall_seconds", wall_seconds},
          {"runs_per_second", wall_seconds > 0 ? static_cast<double>(runs) / wall_seconds : 0.0},
          {"interrupted", interrupted}};
}

std::string BatchSummary::to_text() const {
  std::ostringstream s;
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.1f s, %.1f runs/s", wall_seconds,
                wall_seconds > 0 ? static_cast<double>(runs) / wall_seconds : 0.0);
  s << "batch: " << cases << " of " << total << " cases written" << (interrupted ? " (interrupted)" : "") << " in "
    << rate << "\n";
  s << "  passed " << passed << ", failed " << failed;
  if (skipped) s << ", skipped " << skipped << " already in the output";
  s << "\n";
  if (!error_kinds.empty() || wrong_output) {
    s << "  failures:";
    const char* sep = " ";
    for (const auto& [kind, n] : error_kinds) {
      s << sep << kind << " " << n;
      sep = ", ";
    }
    if (wrong_output) s << sep << "wrong output " << wrong_output;
    s << "\n";
  }
  s << "  timeouts " << timeouts << ", memory " << memory << ", flaky " << flaky << "\n";
  s << "  duration p50 " << format_ms(p50_ms) << ", p99 " << format_ms(p99_ms) << "\n";
  return s.str();
}

std::string BatchSummary::progress_line() const {
  const double rate = wall_seconds > 0 ? static_cast<double>(cases) / wall_seconds : 0.0;
  char buf[256];
  if (rate > 0 && total >= cases)
    std::snprintf(buf, sizeof buf,
                  "batch: %zu/%zu done, %zu passed, %zu failed, %zu timeouts, %.1f cases/s, ETA %.0f s", cases, total,
                  passed, failed, timeouts, rate, static_cast<double>(total - cases) / rate);
  else
    std::snprintf(buf, sizeof buf, "batch: %zu/%zu done, %zu passed, %zu failed, %zu timeouts", cases, total, passed,
                  failed, timeouts);
  return buf;
}

// --- Batch ----------------------------------------------------------------------------------------

struct Batch::Impl {
  struct Case {
    json id;
    std::size_t pos = 0;
    std::optional<std::string> expect;
    int left = 0;  // runs not ended
    int passes = 0;
    bool dropped = false;  // a run was cancelled by stop(): the case is not written
    bool have_shown = false, shown_failed = false;
    RunResult shown;  // the first failing run, else the first run
    json durations = json::array();
    std::vector<CancelToken> tokens;
  };

  Impl(Runner& r, BatchOptions o) : runner(r), opt(std::move(o)) {
    if (opt.repeat < 1) opt.repeat = 1;
    if (opt.shard_count < 1) opt.shard_count = 1;
    if (opt.workers < 1) opt.workers = 1;
    if (opt.window == 0) opt.window = std::max<std::size_t>(64, 32 * opt.workers);
    max_runs = opt.max_in_flight ? opt.max_in_flight : 2 * opt.workers;  // the Runner's executor runs 2 per worker
  }

  bool has_room() const {
    return runs_in_flight < max_runs && next_seq - head < opt.window && ready_bytes < opt.max_buffered_bytes;
  }

  // Writes the finished lines that are next in order. Called with mu held, so lines leave in order.
  void flush_locked() {
    while (!ready.empty() && ready.begin()->first == head) {
      auto node = ready.extract(ready.begin());
      if (node.mapped()) {
        ready_bytes -= node.mapped()->size();
        if (!sink_failed && !(*sink)(*node.mapped())) {
          sink_failed = true;
          stopping = true;
        }
      }
      ++head;
    }
    room.notify_all();
  }

  void count_written(const RunResult& shown, int passes, bool passed) {
    ++summary.cases;
    if (passed)
      ++summary.passed;
    else {
      ++summary.failed;
      if (shown.error_kind != ErrorKind::none) ++summary.error_kinds[to_string(shown.error_kind)];
    }
    if (shown.error_kind == ErrorKind::bad_input) ++summary.bad_input;
    if (shown.timed_out) ++summary.timeouts;
    if (shown.error_kind == ErrorKind::memory) ++summary.memory;
    if (!passed && shown.ok) ++summary.wrong_output;
    if (passes > 0 && passes < opt.repeat) ++summary.flaky;
  }

  // A line that cannot be run: answered bad_input at its place in the order.
  void answer_bad(std::uint64_t seq, const json& id, std::size_t pos, const std::string& why) {
    RunResult r = outcome::failure(ErrorKind::bad_input, why);
    r.isolation = opt.ceiling.isolation;
    std::string line = result_line(id, r, {{"passed", false}, {"index", pos}});
    std::lock_guard<std::mutex> lk(mu);
    count_written(r, 0, false);
    ready_bytes += line.size();
    ready.emplace(seq, std::move(line));
    flush_locked();
  }

  void run_ended(std::uint64_t seq, const RunResult& r) {
    if (opt.on_run_end) opt.on_run_end(r);
    std::lock_guard<std::mutex> lk(mu);
    auto it = running.find(seq);
    if (it == running.end()) return;
    Case& c = it->second;
    --runs_in_flight;
    if (stopping && r.error_kind == ErrorKind::cancelled) {
      c.dropped = true;
    } else {
      const double ms = static_cast<double>(r.duration.count()) / 1000.0;
      c.durations.push_back(ms);
      hist.add(ms);
      ++summary.runs;
      const bool passed = r.ok && (!c.expect || stdout_matches(r.stdout_text, *c.expect));
      if (passed) ++c.passes;
      if (!c.have_shown || (!passed && !c.shown_failed)) {
        c.shown = r;
        c.have_shown = true;
        c.shown_failed = !passed;
      }
    }
    if (--c.left > 0) return;
    std::optional<std::string> line;
    if (!c.dropped) {
      const bool passed = c.passes == opt.repeat;
      json extra = {{"passed", passed}, {"index", c.pos}};
      if (opt.repeat > 1) extra["durations_ms"] = std::move(c.durations);
      line = result_line(c.id, c.shown, extra);
      ready_bytes += line->size();
      count_written(c.shown, c.passes, passed);
    }
    ready.emplace(seq, std::move(line));
    running.erase(it);
    flush_locked();
  }

  // Starts one case line, or answers it bad_input.
  void start_case(const std::string& line, bool too_long, std::size_t lineno, std::size_t pos) {
    std::uint64_t seq;
    {
      std::lock_guard<std::mutex> lk(mu);
      seq = next_seq++;
    }
    const std::string where = "line " + std::to_string(lineno) + ": ";
    if (too_long)
      return answer_bad(seq, nullptr, pos,
                        where + "longer than " + std::to_string(kMaxRequestLineBytes >> 20) + " MiB");
    // Each repeat is submitted with its own copy of the case: K copies of a large case at once are refused.
    if (opt.repeat > 1 && line.size() * static_cast<std::size_t>(opt.repeat) > kMaxRepeatedBytes)
      return answer_bad(seq, line_id(line).value_or(json()), pos,
                        where + "its " + std::to_string(opt.repeat) + " repeats would hold " +
                            std::to_string((line.size() * static_cast<std::size_t>(opt.repeat)) >> 20) +
                            " MiB at once (at most " + std::to_string(kMaxRepeatedBytes >> 20) +
                            "): repeat it less or make it smaller");
    std::string error;
    std::optional<json> req = parse_request_line(line, error);
    if (!req) return answer_bad(seq, nullptr, pos, where + error);
    json id = req->value("id", json());
    if (!usable_id(id))
      return answer_bad(seq, id.is_primitive() ? id : json(), pos,
                        where + "a case needs an 'id' (a string, number or boolean)");
    if (std::string why = id_error(id); !why.empty()) return answer_bad(seq, nullptr, pos, where + why);
    auto code = req->find("code");
    if (code == req->end() || !code->is_string()) return answer_bad(seq, id, pos, where + "'code' must be a string");
    RunOptions options;
    if (auto s = req->find("stdin"); s != req->end() && !s->is_null()) {
      if (!s->is_string()) return answer_bad(seq, id, pos, where + "'stdin' must be a string");
      options.stdin_text = s->get<std::string>();
    }
    if (std::string why = request_files(*req, options); !why.empty()) return answer_bad(seq, id, pos, where + why);
    Case c;
    if (auto e = req->find("expect_stdout"); e != req->end() && !e->is_null()) {
      if (!e->is_string()) return answer_bad(seq, id, pos, where + "'expect_stdout' must be a string");
      c.expect = e->get<std::string>();
    }
    RunnerPolicy policy = opt.ceiling;
    if (auto p = req->find("policy"); p != req->end() && !p->is_null()) {
      if (!p->is_object()) return answer_bad(seq, id, pos, where + "'policy' must be an object");
      if (std::string why = request_policy(*p, opt.ceiling, true, policy); !why.empty())
        return answer_bad(seq, id, pos, where + why);
    }
    json input = req->value("input_data", json::object());
    c.id = id;
    c.pos = pos;
    c.left = opt.repeat;
    for (int k = 0; k < opt.repeat; ++k) c.tokens.emplace_back();
    std::vector<CancelToken> tokens = c.tokens;
    {
      std::lock_guard<std::mutex> lk(mu);
      if (stopping) {  // stop() came while this case was being read: it never starts
        ready.emplace(seq, std::nullopt);
        flush_locked();
        return;
      }
      runs_in_flight += static_cast<std::size_t>(opt.repeat);
      running.emplace(seq, std::move(c));
    }
    const std::string code_text = code->get<std::string>();
    for (int k = 0; k < opt.repeat; ++k) {
      RunOptions o = options;
      o.cancel = tokens[static_cast<std::size_t>(k)];
      try {
        auto ended = [this, seq](const RunResult& r) { run_ended(seq, r); };
        if (opt.submit)
          opt.submit(code_text, input, policy, std::move(o), std::move(ended));
        else
          RunnerAccess::submit(runner, code_text, input, policy, std::move(o), std::move(ended));
      } catch (const std::exception& e) {
        RunResult r = outcome::failure(ErrorKind::bad_input, where + "invalid policy: " + e.what());
        r.isolation = policy.isolation;
        run_ended(seq, r);
      }
    }
  }

  // Cancels every running case (outside mu: a run that has not started answers from within cancel()).
  void cancel_running() {
    std::vector<CancelToken> tokens;
    {
      std::lock_guard<std::mutex> lk(mu);
      for (auto& [seq, c] : running) tokens.insert(tokens.end(), c.tokens.begin(), c.tokens.end());
      cancelled_all = true;
    }
    for (auto& t : tokens) t.cancel();
  }

  BatchSummary snapshot_locked() const {
    BatchSummary s = summary;
    s.p50_ms = hist.percentile(0.5);
    s.p99_ms = hist.percentile(0.99);
    s.wall_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    s.interrupted = stopping;
    return s;
  }

  Runner& runner;
  BatchOptions opt;
  std::size_t max_runs = 4;
  const Sink* sink = nullptr;
  mutable std::mutex mu;
  std::condition_variable room;  // a case finished, or stop()
  bool stopping = false, cancelled_all = false, sink_failed = false;
  std::map<std::uint64_t, Case> running;                      // by sequence number among started cases
  std::map<std::uint64_t, std::optional<std::string>> ready;  // finished, waiting for their turn
  std::uint64_t head = 0, next_seq = 0;                       // the next sequence number to write, to start
  std::size_t ready_bytes = 0, runs_in_flight = 0;
  BatchSummary summary;
  Histogram hist;
  Clock::time_point started = Clock::now();
};

Batch::Batch(Runner& runner, BatchOptions options) : impl_(std::make_unique<Impl>(runner, std::move(options))) {}

Batch::~Batch() = default;

BatchSummary Batch::run(std::istream& in, const CaseIndex& index, const std::vector<bool>& done, const Sink& sink) {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    m.sink = &sink;
    m.started = Clock::now();
    for (std::size_t p = m.opt.shard_index; p < index.size(); p += m.opt.shard_count)
      (p < done.size() && done[p] ? m.summary.skipped : m.summary.total) += 1;
  }
  in.clear();
  in.seekg(0);
  std::string line;
  bool too_long = false;
  std::size_t lineno = 0, pos = 0;
  while (read_request_line(in, line, too_long)) {
    ++lineno;
    if (!too_long && blank_line(line)) continue;
    const std::size_t p = pos++;
    if (p % m.opt.shard_count != m.opt.shard_index || (p < done.size() && done[p])) continue;
    if (m.opt.before_case) m.opt.before_case();
    {
      std::unique_lock<std::mutex> lk(m.mu);
      m.room.wait(lk, [&] { return m.stopping || m.has_room(); });
      if (m.stopping) break;
    }
    m.start_case(line, too_long, lineno, p);
  }
  line.clear();
  line.shrink_to_fit();
  std::unique_lock<std::mutex> lk(m.mu);
  for (;;) {
    m.room.wait(lk, [&] { return m.running.empty() || (m.stopping && !m.cancelled_all); });
    if (m.running.empty()) break;
    lk.unlock();
    m.cancel_running();
    lk.lock();
  }
  m.flush_locked();
  return m.snapshot_locked();
}

void Batch::stop() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stopping = true;
    impl_->room.notify_all();
  }
  impl_->cancel_running();
}

BatchSummary Batch::progress() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->snapshot_locked();
}

// --- outputs: resume and merge --------------------------------------------------------------------

namespace {

// Where an output line belongs: its case's position, from its id (or its "index" for a case without one).
std::optional<std::size_t> position_of(const json& line, const CaseIndex* index) {
  const json id = line.value("id", json());
  auto idx = line.find("index");
  const std::optional<std::size_t> given = idx != line.end() && idx->is_number_unsigned()
                                               ? std::optional<std::size_t>(idx->get<std::size_t>())
                                               : std::nullopt;
  if (!index) return given;
  if (usable_id(id)) return index->find(id);
  if (given && index->without_id(*given)) return given;
  return std::nullopt;
}

}  // namespace

std::vector<bool> answered_positions(const CaseIndex& index, std::istream& output) {
  std::vector<bool> done(index.size(), false);
  std::string line, error;
  bool too_long = false;
  while (read_request_line(output, line, too_long)) {
    if (too_long || blank_line(line)) continue;
    std::optional<json> j = parse_request_line(line, error);
    if (!j) continue;  // a line cut by a crash mid-write: its case runs again
    if (auto p = position_of(*j, &index)) done[*p] = true;
  }
  return done;
}

std::vector<std::string> write_in_order(const std::vector<std::string>& inputs, const CaseIndex* index,
                                        const std::string& out_path, bool strict) {
  struct Entry {
    std::size_t pos, file;
    std::streamoff offset;
    std::size_t length;
  };
  std::vector<Entry> entries;
  std::vector<std::string> dropped;
  std::vector<std::ifstream> files;
  for (std::size_t f = 0; f < inputs.size(); ++f) {
    files.emplace_back(inputs[f], std::ios::binary);
    if (!files.back()) throw BatchInputError("cannot read '" + inputs[f] + "'");
    std::ifstream& in = files.back();
    std::string line, error;
    bool too_long = false;
    std::size_t lineno = 0;
    std::streamoff offset = in.tellg();
    while (read_request_line(in, line, too_long)) {
      ++lineno;
      const std::streamoff next = in.tellg();
      const std::size_t length = static_cast<std::size_t>((next < 0 ? offset : next) - offset);
      const std::streamoff at = offset;
      offset = next;
      if (!too_long && blank_line(line)) continue;
      std::optional<json> j = too_long ? std::nullopt : parse_request_line(line, error);
      std::optional<std::size_t> pos = j ? position_of(*j, index) : std::nullopt;
      if (!pos) {
        std::string why = inputs[f] + " line " + std::to_string(lineno) +
                          (j ? ": no case of the input has this line's id" : ": not a result line");
        if (strict) throw BatchInputError(why);
        dropped.push_back(why + " (dropped)");
        continue;
      }
      entries.push_back({*pos, f, at, length});
    }
    if (in.bad()) throw BatchInputError("cannot read '" + inputs[f] + "'");
    in.clear();
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.pos < b.pos; });
  std::vector<Entry> kept;
  kept.reserve(entries.size());
  for (const Entry& e : entries) {
    if (!kept.empty() && kept.back().pos == e.pos) {
      std::string why = "case at position " + std::to_string(e.pos) + " answered twice (" + inputs[kept.back().file] +
                        ", " + inputs[e.file] + ")";
      if (strict) throw BatchInputError(why);
      dropped.push_back(why + "; the first line is kept");
      continue;
    }
    kept.push_back(e);
  }
  if (strict) {
    const std::size_t expected = index ? index->size() : (kept.empty() ? 0 : kept.back().pos + 1);
    if (kept.size() != expected) {
      std::size_t missing = 0;
      while (missing < kept.size() && kept[missing].pos == missing) ++missing;
      throw BatchInputError("missing cases: " + std::to_string(expected - kept.size()) + " of " +
                            std::to_string(expected) + " have no line (the first at position " +
                            std::to_string(missing) + ")");
    }
  }
  // A temporary file next to the output, renamed over it: the output is whole at every moment.
  std::string tmp = out_path + ".tmpXXXXXX";
  Fd fd(::mkstemp(tmp.data()));
  if (!fd) throw BatchInputError("cannot create a temporary file next to '" + out_path + "': " + std::strerror(errno));
  std::string buf;
  std::string out;
  for (const Entry& e : kept) {
    std::ifstream& in = files[e.file];
    buf.resize(e.length);
    in.seekg(e.offset);
    in.read(buf.data(), static_cast<std::streamsize>(e.length));
    if (static_cast<std::size_t>(in.gcount()) != e.length) {
      ::unlink(tmp.c_str());
      throw BatchInputError("cannot read '" + inputs[e.file] + "' again");
    }
    if (buf.empty() || buf.back() != '\n') buf.push_back('\n');
    out += buf;
    if (out.size() >= (1u << 20) || &e == &kept.back()) {
      std::size_t off = 0;
      while (off < out.size()) {
        const ssize_t w = ::write(fd.get(), out.data() + off, out.size() - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
          const int err = errno;
          ::unlink(tmp.c_str());
          throw BatchInputError("cannot write '" + tmp + "': " + std::strerror(err));
        }
        off += static_cast<std::size_t>(w);
      }
      out.clear();
    }
  }
  // The file keeps the mode it had (mkstemp made the temporary one 0600).
  struct stat st {};
  const mode_t mode = ::stat(out_path.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0644;
  if (::fchmod(fd.get(), mode) != 0 || ::fsync(fd.get()) != 0 || ::rename(tmp.c_str(), out_path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw BatchInputError("cannot replace '" + out_path + "': " + std::strerror(err));
  }
  return dropped;
}

}  // namespace spr::detail
