// spr-bench's report: one table of every mode and pattern against the floor that bounds it, the
// ratios issue 12 names, the JSON (with those ratios' targets) and the SVG plot.
#include <sys/utsname.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <utility>
#include <functional>
#include <thread>

#include "bench.hpp"
#include "plot.hpp"

namespace spr_bench {

namespace {

using Opt = std::optional<double>;

std::string fixed(double v, int decimals) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string num(Opt v, int decimals) {
  return v ? fixed(*v, decimals) : "-";
}

const ModeResult* mode(const Report& r, const std::string& name) {
  for (const auto& m : r.modes)
    if (m.name == name && m.available) return &m;
  return nullptr;
}

Opt p50(const std::optional<Stats>& s) {
  return s ? Opt(s->p50) : std::nullopt;
}
Opt div(Opt a, Opt b) {
  return a && b && *b > 0 ? Opt(*a / *b) : std::nullopt;
}

// A ratio the issue sets a target for: printed as a figure, judged only in the JSON.
struct Ratio {
  std::string key, text;
  Opt value;
  bool at_most;
  double target;
};

std::vector<Ratio> ratios(const Report& r) {
  const ModeResult* ns = mode(r, "namespace");
  const ModeResult* fk = mode(r, "fork");
  const ModeResult* si = mode(r, "subinterpreter");
  auto b2b = [](const ModeResult* m) { return m ? Opt(m->b2b.lat.p50) : std::nullopt; };
  auto paced = [](const ModeResult* m) { return m ? Opt(m->paced.lat.p50) : std::nullopt; };
  const Opt baseline = r.baseline.available ? Opt(r.baseline.lat.p50) : std::nullopt;
  Opt fork_cpu_floor;
  if (r.floors.bare_fork_cpu_us && r.engine.cpu_us_per_run)
    fork_cpu_floor = *r.floors.bare_fork_cpu_us + *r.engine.cpu_us_per_run;
  Opt serve_extra;
  if (r.serve.available && ns) serve_extra = r.serve.b2b.lat.p50 - ns->b2b.lat.p50;
  return {
      {"fork_b2b_vs_bare_fork", "fork back to back p50 / bare fork p50", div(b2b(fk), p50(r.floors.bare_fork)), true,
       1.3},
      {"fork_paced_vs_namespace_paced", "fork paced p50 / namespace paced p50", div(paced(fk), paced(ns)), true, 2},
      {"fork_cpu_vs_floor", "fork CPU per run / (bare fork CPU + engine run CPU)",
       div(fk ? fk->b2b.cpu_us_per_run : std::nullopt, fork_cpu_floor), true, 3},
      {"fork_b2b_vs_warm_fork", "fork back to back p50 / warm CPython forking p50",
       div(b2b(fk), p50(r.engine.warm_fork)), true, 2},
      {"fork_paced_vs_small_fork", "fork paced p50 / bare fork of a small C process p50",
       div(paced(fk), p50(r.floors.small_fork)), true, 1.3},
      {"baseline_vs_fork_paced", "original's p50 / fork paced p50", div(baseline, paced(fk)), false, 30},
      {"namespace_b2b_vs_pipe", "namespace back to back p50 / cross-CPU pipe round trip",
       div(b2b(ns), p50(r.floors.pipe_cross_cpu ? r.floors.pipe_cross_cpu : r.floors.pipe_same_cpu)), true, 2},
      {"namespace_paced_vs_paced_pipe", "namespace paced p50 / cross-CPU pipe round trip after 50 ms idle",
       div(paced(ns), p50(r.floors.pipe_paced_cross_cpu ? r.floors.pipe_paced_cross_cpu : r.floors.pipe_paced_same_cpu)),
       true, 2},
      {"serve_minus_api_us", "serve back to back p50 - C++ API back to back p50 (us)", serve_extra, true, 30},
      {"subinterpreter_paced_vs_namespace_paced", "subinterpreter paced p50 / namespace paced p50",
       div(paced(si), paced(ns)), true, 3},
  };
}

struct Row {
  std::string name, pattern;
  Stats lat;
  Opt runs_per_s, cpu, faults;
  std::string floor_name;
  Opt floor_us;
};

std::vector<Row> rows(const Report& r) {
  std::vector<Row> out;
  const Floors& f = r.floors;
  const auto pipe = f.pipe_cross_cpu ? f.pipe_cross_cpu : f.pipe_same_cpu;
  const auto paced_pipe = f.pipe_paced_cross_cpu ? f.pipe_paced_cross_cpu : f.pipe_paced_same_cpu;
  for (const auto& m : r.modes) {
    if (!m.available) continue;
    std::string floor = "pipe round trip";
    Opt floor_us = p50(pipe);
    if (m.name == "fork") {
      floor = "bare fork";
      floor_us = p50(f.bare_fork);
    } else if (m.name == "subinterpreter") {
      floor = "new interpreter";
      floor_us = p50(f.subinterp);
    } else if (m.name == "process") {
      floor = "python3 -c pass";
      floor_us = p50(f.python_pass);
    }
    out.push_back(
        {m.name, "back to back", m.b2b.lat, m.runs_per_s, m.b2b.cpu_us_per_run, m.b2b.faults_per_run, floor, floor_us});
    const bool pipe_floor = m.name == "namespace";
    out.push_back({m.name, "paced", m.paced.lat, std::nullopt, m.paced.cpu_us_per_run, m.paced.faults_per_run,
                   pipe_floor ? "paced pipe round trip" : floor, pipe_floor ? p50(paced_pipe) : floor_us});
  }
  if (r.serve.available) {
    out.push_back({"namespace/serve", "back to back", r.serve.b2b.lat, std::nullopt, std::nullopt, std::nullopt,
                   "pipe round trip", p50(pipe)});
    out.push_back({"namespace/serve", "paced", r.serve.paced.lat, std::nullopt, std::nullopt, std::nullopt,
                   "paced pipe round trip", p50(paced_pipe)});
  }
  if (r.engine.available) {
    out.push_back(
        {"engine", "in process", r.engine.lat, std::nullopt, r.engine.cpu_us_per_run, std::nullopt, "", std::nullopt});
    if (r.engine.fork_run)
      out.push_back({"engine", "forked run", *r.engine.fork_run, std::nullopt, std::nullopt, r.engine.fork_run_faults,
                     "bare fork", p50(f.bare_fork)});
  }
  if (r.baseline.available)
    out.push_back({"original", "python3 per run", r.baseline.lat, std::nullopt, r.baseline.cpu_us_per_run, std::nullopt,
                   "python3 -c pass", p50(f.python_pass)});
  return out;
}

void print_table(const std::vector<std::vector<std::string>>& table) {
  std::vector<std::size_t> w(table[0].size(), 0);
  for (const auto& row : table)
    for (std::size_t c = 0; c < row.size(); ++c) w[c] = std::max(w[c], row[c].size());
  for (std::size_t i = 0; i < table.size(); ++i) {
    std::string s;
    for (std::size_t c = 0; c < table[i].size(); ++c) {
      const std::string& v = table[i][c];
      const std::string pad(w[c] - v.size(), ' ');
      s += c < 2 || c == 8 ? v + pad : pad + v;  // names left, figures right
      s += "  ";
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    std::printf("%s\n", s.c_str());
    if (i == 0) std::printf("%s\n", std::string(s.size(), '-').c_str());
  }
}

json opt(Opt v) {
  return v ? json(*v) : json(nullptr);
}
json stats_json(const Stats& s) {
  return {{"n", s.n}, {"p50_us", s.p50}, {"p99_us", s.p99}};
}
json stats_json(const std::optional<Stats>& s) {
  return s ? stats_json(*s) : json(nullptr);
}
json pattern_json(const Pattern& p) {
  json j = stats_json(p.lat);
  j["failures"] = p.failures;
  j["cpu_us_per_run"] = opt(p.cpu_us_per_run);
  j["minor_faults_per_run"] = opt(p.faults_per_run);
  j["parent_minor_faults_per_run"] = opt(p.parent_faults_per_run);
  return j;
}

}  // namespace

void print_report(const Report& r) {
  const Floors& f = r.floors;
  std::printf("\nfloors, measured in this run:\n");
  auto floor_line = [](const char* what, const std::optional<Stats>& s) {
    if (s) std::printf("  %-48s p50 %9.1f us  p99 %9.1f us\n", what, s->p50, s->p99);
  };
  floor_line("pipe round trip, same CPU", f.pipe_same_cpu);
  floor_line("pipe round trip, across CPUs", f.pipe_cross_cpu);
  floor_line("pipe round trip after 50 ms idle, same CPU", f.pipe_paced_same_cpu);
  floor_line("pipe round trip after 50 ms idle, across CPUs", f.pipe_paced_cross_cpu);
  char label[80];
  std::snprintf(label, sizeof label, "bare fork, C process of %.0f MB", f.small_fork_rss_mb);
  floor_line(label, f.small_fork);
  if (f.small_fork_cpu_us) std::printf("  %-48s %9.1f us of CPU\n", "  its CPU (parent and child)", *f.small_fork_cpu_us);
  std::snprintf(label, sizeof label, "bare fork, C process of %.1f MB (worker's)", f.fork_rss_mb);
  floor_line(label, f.bare_fork);
  if (f.bare_fork_cpu_us) std::printf("  %-48s %9.1f us of CPU\n", "  its CPU (parent and child)", *f.bare_fork_cpu_us);
  std::printf("  (fork+_exit+waitpid of a C program: the first as small as one, the second as resident as\n"
              "   the idle fork-mode worker; paced fork runs are held to the first, the forked runs to the second)\n");
  if (r.engine.warm_fork) {
    floor_line("warm CPython forking (os.fork()+_exit+waitpid)", r.engine.warm_fork);
    std::printf("  %-48s %9.1f us of CPU\n", "  its CPU (parent and child)", *r.engine.warm_fork_cpu_us);
    if (r.engine.after_fork_child_cpu_us)
      std::printf("  %-48s %9.1f us of CPU\n", "  of which PyOS_AfterFork_Child", *r.engine.after_fork_child_cpu_us);
  }
  if (r.engine.warm_fork_raw) {
    floor_line("the same process forking without Python's hooks", r.engine.warm_fork_raw);
    std::printf("  %-48s %9.1f us of CPU\n", "  its CPU (parent and child)", *r.engine.warm_fork_raw_cpu_us);
  }
  if (f.cow_us_per_page) std::printf("  %-48s %9.2f us per page written\n", "copy-on-write", *f.cow_us_per_page);
  floor_line("Py_NewInterpreter + Py_EndInterpreter", f.subinterp);
  floor_line("fresh `python3 -c pass`", f.python_pass);

  std::vector<std::vector<std::string>> table = {
      {"mode", "pattern", "p50 us", "p99 us", "runs/s", "cpu us/run", "faults/run", "x floor", "floor"}};
  for (const Row& row : rows(r)) {
    table.push_back({row.name, row.pattern, fixed(row.lat.p50, 1), fixed(row.lat.p99, 1), num(row.runs_per_s, 0),
                     num(row.cpu, 0), num(row.faults, 0), num(div(row.lat.p50, row.floor_us), 2), row.floor_name});
  }
  std::printf("\n");
  print_table(table);
  std::printf(
      "\nback to back: the next request as soon as the reply is in; paced: one request every %.0f ms.\n"
      "runs/s: 2 workers fed by 4 threads (back to back). cpu: the bench (supervisor) and every process\n"
      "under its workers, run children included: /proc/<pid>/stat utime+stime+cutime+cstime of each live\n"
      "process under each worker (a child's CPU reaches its reaper's cutime when reaped, also inside the\n"
      "workers' PID namespaces). faults/run: minor page faults of a fork-mode run's child: the warm\n"
      "worker's cminflt (children it reaped) plus its live children's minflt+cminflt (engine: the child's\n"
      "own getrusage). x floor: p50 / the floor's p50.\n",
      kPacedGapMs);
  for (const auto& m : r.modes)
    if (m.available && m.b2b.parent_faults_per_run)
      std::printf("%s: the warm worker's own minor faults per run: %.1f back to back, %.1f paced\n", m.name.c_str(),
                  *m.b2b.parent_faults_per_run, m.paced.parent_faults_per_run.value_or(0));
  std::printf("\nratios:\n");
  for (const Ratio& q : ratios(r)) std::printf("  %-62s %s\n", q.text.c_str(), num(q.value, 2).c_str());
  for (const auto& m : r.modes) {
    if (!m.available)
      std::printf("note: %s not available: %s\n", m.name.c_str(), m.error.c_str());
    else if (m.b2b.failures + m.paced.failures + m.tput_failures > 0)
      std::printf("note: %s: %ld failed runs (first: %s)\n", m.name.c_str(),
                  m.b2b.failures + m.paced.failures + m.tput_failures, m.first_failure.c_str());
  }
  if (r.engine_run && !r.engine.available) std::printf("note: engine not available: %s\n", r.engine.error.c_str());
  if (r.baseline_run && !r.baseline.available)
    std::printf("note: original's model not available: %s\n", r.baseline.error.c_str());
  if (r.serve_run && !r.serve.available) std::printf("note: serve not available: %s\n", r.serve.error.c_str());
}

namespace {

// A duration for a reader: 31 µs, 1.47 ms.
std::string human_us(double us) {
  if (us >= 10000) return fixed(us / 1000, 0) + " ms";
  if (us >= 1000) return fixed(us / 1000, 2) + " ms";
  if (us >= 100) return fixed(us, 0) + " µs";
  return fixed(us, 1) + " µs";
}
std::string human_us(Opt us) {
  return us ? human_us(*us) : "–";
}

}  // namespace

std::string markdown(const Report& r) {
  const Floors& f = r.floors;
  std::string md;
  auto line = [&](const std::string& s) { md += s + "\n"; };
  const double load = std::strtod(r.load_start.c_str(), nullptr);
  line("One `make bench` run (Python " + r.python + ", " + std::to_string(std::thread::hardware_concurrency()) +
       " CPUs, load average " + r.load_start + " at start, " + r.load_end + " at end" +
       (load >= 1 ? "; **the machine was busy: every figure is inflated, compare only ratios within the run**" : "") +
       "). Written by `make bench` from that run's figures; `build/bench.json` has them all.");
  line("");
  line("| floor (this machine, this run) | p50 | CPU per operation |");
  line("|---|---|---|");
  auto floor_row = [&](const std::string& what, const std::optional<Stats>& s, Opt cpu) {
    if (s) line("| " + what + " | " + human_us(s->p50) + " | " + human_us(cpu) + " |");
  };
  floor_row("pipe round trip, same CPU", f.pipe_same_cpu, std::nullopt);
  floor_row("pipe round trip, across CPUs", f.pipe_cross_cpu, std::nullopt);
  floor_row("pipe round trip after 50 ms idle, same CPU (paced floor)", f.pipe_paced_same_cpu, std::nullopt);
  floor_row("pipe round trip after 50 ms idle, across CPUs (paced floor)", f.pipe_paced_cross_cpu, std::nullopt);
  floor_row("bare fork + `_exit` + `waitpid`, C process of " + fixed(f.small_fork_rss_mb, 0) + " MB", f.small_fork,
            f.small_fork_cpu_us);
  floor_row("the same, C process as resident as the `fork` worker (" + fixed(f.fork_rss_mb, 1) + " MB)", f.bare_fork,
            f.bare_fork_cpu_us);
  floor_row("warm CPython forking (`os.fork()` + `_exit` + `waitpid`)", r.engine.warm_fork, r.engine.warm_fork_cpu_us);
  floor_row("the same process forking without Python's fork hooks", r.engine.warm_fork_raw,
            r.engine.warm_fork_raw_cpu_us);
  if (r.engine.after_fork_child_cpu_us)
    line("| `PyOS_AfterFork_Child` in the child (its CPU) | – | " + human_us(*r.engine.after_fork_child_cpu_us) + " |");
  if (r.engine.available)
    line("| a run in process (the engine, no isolation) | " + human_us(r.engine.lat.p50) + " | " +
         human_us(r.engine.cpu_us_per_run) + " |");
  if (f.cow_us_per_page) line("| copy-on-write, per page a child writes | " + human_us(*f.cow_us_per_page) + " | – |");
  floor_row("`Py_NewInterpreter` + `Py_EndInterpreter`", f.subinterp, std::nullopt);
  floor_row("fresh `python3 -c pass`", f.python_pass, std::nullopt);
  line("");
  line("| mode | pattern | p50 | p99 | runs/s | CPU per run | faults per run | × floor (floor) |");
  line("|---|---|---|---|---|---|---|---|");
  for (const Row& row : rows(r)) {
    std::string name = "`" + row.name + "`";
    if (row.name == "namespace/serve") name = "`namespace` through `serve`";
    if (row.name == "engine") name = "in-process engine";
    if (row.name == "original") name = "original's model";
    const Opt x = div(row.lat.p50, row.floor_us);
    line("| " + name + " | " + row.pattern + " | " + human_us(row.lat.p50) + " | " + human_us(row.lat.p99) + " | " +
         (row.runs_per_s ? fixed(*row.runs_per_s, 0) : "–") + " | " + human_us(row.cpu) + " | " +
         (row.faults ? fixed(*row.faults, 0) : "–") + " | " +
         (x ? fixed(*x, 2) + " (" + row.floor_name + ")" : "–") + " |");
  }
  line("");
  line("CPU per run: the bench (the supervisor) and every process under its workers, run children included "
       "(`/proc/<pid>/stat` utime+stime+cutime+cstime). Faults per run: minor page faults of a `fork`-mode run's "
       "child (the warm worker's cminflt and its live children's minflt+cminflt).");
  if (!r.engine.fork_run_phase_faults.empty()) {
    line("");
    line("| a forked run's child (engine section, builtins and streams prebuilt), phase | minor faults |");
    line("|---|---|");
    const std::pair<const char*, const char*> phases[] = {
        {"after_fork_hooks", "`PyOS_AfterFork_Child` (Python's after-fork hooks)"},
        {"run", "the run (scope, compile, execution, result)"},
        {"exit", "`_exit` (the child's teardown)"}};
    for (const auto& [key, what] : phases) {
      auto it = r.engine.fork_run_phase_faults.find(key);
      if (it != r.engine.fork_run_phase_faults.end()) line(std::string("| ") + what + " | " + fixed(it->second, 0) + " |");
    }
  }
  line("");
  line("| ratio (same run) | target | this run | met |");
  line("|---|---|---|---|");
  for (const Ratio& q : ratios(r)) {
    const std::string target = (q.at_most ? "≤ " : "≥ ") + fixed(q.target, q.target == std::floor(q.target) ? 0 : 1);
    const std::string met = q.value ? ((q.at_most ? *q.value <= q.target : *q.value >= q.target) ? "yes" : "no") : "–";
    line("| " + q.text + " | " + target + " | " + num(q.value, 2) + " | " + met + " |");
  }
  return md;
}

bool replace_marked_block(const std::string& path, const std::string& body, std::string& error) {
  static const std::string kBegin = "<!-- spr-bench:begin -->", kEnd = "<!-- spr-bench:end -->";
  std::ifstream in(path);
  if (!in) {
    error = "cannot read " + path;
    return false;
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto b = text.find(kBegin);
  const auto e = text.find(kEnd);
  if (b == std::string::npos || e == std::string::npos || e < b || text.find(kBegin, b + 1) != std::string::npos) {
    error = path + " has no single " + kBegin + " ... " + kEnd + " block";
    return false;
  }
  text = text.substr(0, b + kBegin.size()) + "\n" + body + text.substr(e);
  const std::string tmp = path + ".bench-tmp";
  {
    std::ofstream out(tmp);
    out << text;
    if (!out.flush()) {
      error = "cannot write " + tmp;
      return false;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    error = "cannot replace " + path;
    return false;
  }
  return true;
}

json to_json(const Report& r) {
  json j;
  const Floors& f = r.floors;
  j["floors"] = {{"pipe_round_trip_same_cpu", stats_json(f.pipe_same_cpu)},
                 {"pipe_round_trip_cross_cpu", stats_json(f.pipe_cross_cpu)},
                 {"pipe_round_trip_paced_same_cpu", stats_json(f.pipe_paced_same_cpu)},
                 {"pipe_round_trip_paced_cross_cpu", stats_json(f.pipe_paced_cross_cpu)},
                 {"bare_fork_small", stats_json(f.small_fork)},
                 {"bare_fork_small_rss_mb", f.small_fork_rss_mb},
                 {"bare_fork_small_cpu_us", opt(f.small_fork_cpu_us)},
                 {"warm_cpython_fork", stats_json(r.engine.warm_fork)},
                 {"warm_cpython_fork_cpu_us", opt(r.engine.warm_fork_cpu_us)},
                 {"warm_cpython_after_fork_child_cpu_us", opt(r.engine.after_fork_child_cpu_us)},
                 {"warm_process_fork_no_hooks", stats_json(r.engine.warm_fork_raw)},
                 {"warm_process_fork_no_hooks_cpu_us", opt(r.engine.warm_fork_raw_cpu_us)},
                 {"bare_fork", stats_json(f.bare_fork)},
                 {"bare_fork_rss_mb", f.fork_rss_mb},
                 {"bare_fork_cpu_us", opt(f.bare_fork_cpu_us)},
                 {"cow_us_per_page", opt(f.cow_us_per_page)},
                 {"subinterpreter_create_end", stats_json(f.subinterp)},
                 {"python3_c_pass", stats_json(f.python_pass)}};
  j["modes"] = json::object();
  for (const auto& m : r.modes) {
    json e{{"available", m.available}};
    if (!m.available) {
      e["error"] = m.error;
    } else {
      e["back_to_back"] = pattern_json(m.b2b);
      e["paced"] = pattern_json(m.paced);
      e["runs_per_s"] = m.runs_per_s;
      e["throughput_failures"] = m.tput_failures;
      e["cold_start_ms"] = opt(m.cold_start_ms);
      e["idle_rss_mb"] = opt(m.idle_rss_mb);
      e["idle_pss_mb"] = opt(m.idle_pss_mb);
      if (!m.first_failure.empty()) e["first_failure"] = m.first_failure;
    }
    j["modes"][m.name] = e;
  }
  j["serve_namespace"] = r.serve.available
                             ? json{{"back_to_back", pattern_json(r.serve.b2b)}, {"paced", pattern_json(r.serve.paced)}}
                             : json(nullptr);
  if (r.engine.available)
    j["engine"] = {{"in_process", stats_json(r.engine.lat)},
                   {"cpu_us_per_run", opt(r.engine.cpu_us_per_run)},
                   {"forked_run", stats_json(r.engine.fork_run)},
                   {"forked_run_minor_faults", opt(r.engine.fork_run_faults)},
                   {"forked_run_cpu_us", r.engine.fork_run_cpu_us},
                   {"forked_run_prebuilt", stats_json(r.engine.fork_run_prebuilt)},
                   {"forked_run_prebuilt_minor_faults", r.engine.fork_run_prebuilt_faults},
                   {"forked_run_prebuilt_cpu_us", r.engine.fork_run_prebuilt_cpu_us},
                   {"forked_run_prebuilt_phase_faults", r.engine.fork_run_phase_faults},
                   {"failures", r.engine.failures}};
  else
    j["engine"] = nullptr;
  j["original"] = r.baseline.available ? json{{"python3_per_run", stats_json(r.baseline.lat)},
                                              {"cpu_us_per_run", opt(r.baseline.cpu_us_per_run)}}
                                       : json(nullptr);
  j["ratios"] = json::object();
  for (const Ratio& q : ratios(r)) {
    json e{{"what", q.text}, {"value", opt(q.value)}, {"target", q.target}, {"op", q.at_most ? "<=" : ">="}};
    e["met"] = q.value ? json(q.at_most ? *q.value <= q.target : *q.value >= q.target) : json(nullptr);
    j["ratios"][q.key] = e;
  }
  struct utsname u {};
  uname(&u);
  j["machine"] = {{"cpus", std::thread::hardware_concurrency()},
                  {"kernel", std::string(u.release)},
                  {"arch", std::string(u.machine)},
                  {"loadavg_start", r.load_start},
                  {"loadavg_end", r.load_end}};
  j["python"] = r.python;
  j["paced_gap_ms"] = kPacedGapMs;
  j["snippet"] = kSnippet;
  j["input_data"] = kInput;
  j["seconds"] = r.seconds;
  return j;
}

void write_plot(const Report& r, const std::string& path) {
  std::vector<PlotRow> bars;
  for (const Row& row : rows(r)) {
    std::string pattern = row.pattern == "back to back" ? "b2b" : row.pattern;
    std::string name = row.name == "namespace/serve" ? "serve" : row.name;
    if (row.name == "original") pattern = "(python3)";
    bars.push_back({name + " " + pattern, row.lat.p50, row.lat.p99});
  }
  std::vector<PlotLine> lines;
  const Floors& f = r.floors;
  if (f.pipe_cross_cpu) lines.push_back({"pipe round trip", f.pipe_cross_cpu->p50});
  if (f.bare_fork) lines.push_back({"bare fork", f.bare_fork->p50});
  if (f.subinterp) lines.push_back({"new interpreter", f.subinterp->p50});
  if (f.python_pass) lines.push_back({"python3 -c pass", f.python_pass->p50});
  std::string subtitle =
      "math.sqrt(input_data['x']); b2b = back to back, paced = one request every " + fixed(kPacedGapMs, 0) + " ms";
  if (!r.python.empty()) subtitle += "; Python " + r.python;
  subtitle += "; load " + r.load_start + " -> " + r.load_end;
  std::ofstream out(path);
  out << latency_svg(bars, lines, "safe-py-runner: latency per run (p50 / p99) against this machine's floors",
                     subtitle);
  if (!out) std::fprintf(stderr, "cannot write %s\n", path.c_str());
}

}  // namespace spr_bench
