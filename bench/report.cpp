// spr-bench's report: one table of every mode and pattern against the floor that bounds it, the
// ratios issue 12 names, the JSON (with those ratios' targets) and the SVG plot.
#include <sys/utsname.h>

#include <cmath>
#include <cstdio>
#include <fstream>
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
    out.push_back(
        {m.name, "paced", m.paced.lat, std::nullopt, m.paced.cpu_us_per_run, m.paced.faults_per_run, floor, floor_us});
  }
  if (r.serve.available) {
    out.push_back({"namespace/serve", "back to back", r.serve.b2b.lat, std::nullopt, std::nullopt, std::nullopt,
                   "pipe round trip", p50(pipe)});
    out.push_back({"namespace/serve", "paced", r.serve.paced.lat, std::nullopt, std::nullopt, std::nullopt,
                   "pipe round trip", p50(pipe)});
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
  return j;
}

}  // namespace

void print_report(const Report& r) {
  const Floors& f = r.floors;
  std::printf("\nfloors, measured in this run:\n");
  auto floor_line = [](const char* what, const std::optional<Stats>& s) {
    if (s) std::printf("  %-42s p50 %9.1f us  p99 %9.1f us\n", what, s->p50, s->p99);
  };
  floor_line("pipe round trip, same CPU", f.pipe_same_cpu);
  floor_line("pipe round trip, across CPUs", f.pipe_cross_cpu);
  char label[80];
  std::snprintf(label, sizeof label, "bare fork, C process of %.0f MB", f.small_fork_rss_mb);
  floor_line(label, f.small_fork);
  if (f.small_fork_cpu_us) std::printf("  %-42s %9.1f us of CPU\n", "  its CPU (parent and child)", *f.small_fork_cpu_us);
  std::snprintf(label, sizeof label, "bare fork, C process of %.1f MB (worker's)", f.fork_rss_mb);
  floor_line(label, f.bare_fork);
  if (f.bare_fork_cpu_us) std::printf("  %-42s %9.1f us of CPU\n", "  its CPU (parent and child)", *f.bare_fork_cpu_us);
  std::printf("  (fork+_exit+waitpid of a C program: the first as small as one, the second as resident as\n"
              "   the idle fork-mode worker; paced fork runs are held to the first, the forked runs to the second)\n");
  if (r.engine.warm_fork) {
    floor_line("warm CPython forking (os.fork()+_exit+waitpid)", r.engine.warm_fork);
    std::printf("  %-42s %9.1f us of CPU\n", "  its CPU (parent and child)", *r.engine.warm_fork_cpu_us);
  }
  if (f.cow_us_per_page) std::printf("  %-42s %9.2f us per page written\n", "copy-on-write", *f.cow_us_per_page);
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
      "runs/s: 2 workers fed by 4 threads (back to back). cpu: bench + workers + their run children.\n"
      "faults/run: minor page faults of a fork-mode run's child (worker's reaped children; engine: the\n"
      "child's own getrusage). x floor: p50 / the floor's p50.\n",
      kPacedGapMs);
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

json to_json(const Report& r) {
  json j;
  const Floors& f = r.floors;
  j["floors"] = {{"pipe_round_trip_same_cpu", stats_json(f.pipe_same_cpu)},
                 {"pipe_round_trip_cross_cpu", stats_json(f.pipe_cross_cpu)},
                 {"bare_fork_small", stats_json(f.small_fork)},
                 {"bare_fork_small_rss_mb", f.small_fork_rss_mb},
                 {"bare_fork_small_cpu_us", opt(f.small_fork_cpu_us)},
                 {"warm_cpython_fork", stats_json(r.engine.warm_fork)},
                 {"warm_cpython_fork_cpu_us", opt(r.engine.warm_fork_cpu_us)},
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
