// Red-team suite: escape attempts against the sandbox, data-driven (attempts.inc), run in the isolation
// mode named by SPR_TEST_ISOLATION. Each attempt asserts the ABSENCE of its side effect, observed from the
// host: canary files, a TCP listener, a decoy process, the supervisor's descendants and their threads, the
// host's stderr, the supervisor's memory, secret tokens in every output field, and the next runs.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>
#include <utility>

#include <spr/runner.hpp>

#include "escape_helpers.hpp"

namespace {

using spr::json;
using sec::all_output;

constexpr long kSecretSize = 4321;

struct Obs {
  spr::RunResult attack, victim, followup;
  std::string vsecret;
  std::string host_stderr;  // what reached the host's stderr during the attempt
  long supervisor_peak_growth_kb = 0;
};

struct Attempt {
  std::string id, family, code;
  std::string victim;    // run after the attack, with a fresh secret in input_data['vsecret']
  std::string followup;  // run after that (the attacker again, or a plain next run)
  std::string cleanup;   // undoes namespace-mode state so later attempts start clean
  const char* policy = nullptr;  // JSON overrides, only for attempts about a policy option
  bool documented_ns = false;    // namespace mode shares module objects by design
  int settle_ms = 0;             // wait before observing (delayed effects)
  std::function<std::string(const Obs&)> check;

  Attempt(std::string id_, std::string family_, std::string code_, std::string victim_ = {},
          std::string followup_ = {}, std::string cleanup_ = {}, const char* policy_ = nullptr,
          bool documented_ns_ = false, int settle_ms_ = 0, std::function<std::string(const Obs&)> check_ = {})
      : id(std::move(id_)), family(std::move(family_)), code(std::move(code_)), victim(std::move(victim_)),
        followup(std::move(followup_)), cleanup(std::move(cleanup_)), policy(policy_),
        documented_ns(documented_ns_), settle_ms(settle_ms_), check(std::move(check_)) {}
};

#include "attempts.inc"

int count_distinct_families() {
  std::map<std::string, int> f;
  for (const auto& a : kAttempts) ++f[a.family];
  return static_cast<int>(f.size());
}

spr::Isolation mode_from_env() {
  const char* m = std::getenv("SPR_TEST_ISOLATION");
  std::string s = m ? m : "fork";
  return spr::RunnerPolicy::from_json({{"isolation", s}}).isolation;
}

struct Row {
  std::string id, family, layer, detail;
  bool contained;
};

std::string write_secret(const std::string& path, const std::string& token) {
  std::ofstream out(path);
  std::string body = "SECRET " + token + "\n";
  while (static_cast<long>(body.size()) < kSecretSize) body += "#";
  body.resize(kSecretSize);
  out << body;
  return path;
}

}  // namespace

TEST_CASE("security: escape attempts under the default policy") {
  const spr::Isolation iso = mode_from_env();
  const std::string mode = spr::to_string(iso);
  REQUIRE(kAttempts.size() >= 60);
  CHECK(count_distinct_families() >= 15);

  // Observers first: the workers inherit fd 2, and the environment, at spawn.
  sec::StderrTap tap;
  const std::string token = "SPRSECRET" + sec::random_hex(12);
  setenv("SPR_SECRET", token.c_str(), 1);
  // The file's NAME carries its own token (a directory listing leak), its CONTENT the secret token.
  const std::string name_token = "SPRNAME" + sec::random_hex(8);
  const std::string secret_path = write_secret("/tmp/spr-secret-" + name_token, token);
  const char* home = std::getenv("HOME");
  const std::string home_dir = home && *home ? home : "/tmp";
  const std::string home_secret = write_secret(home_dir + "/.spr-secret-" + sec::random_hex(6), token);
  sec::Listener listener;
  sec::Decoy decoy;

  spr::RunnerOptions opts;
  opts.workers = 1;  // namespace mode: every run of the suite lands in the same long-lived worker
  opts.policy.isolation = iso;
  // A process-mode worker starts for every run; under ASan at load 13 one start took longer than the default
  // allows, and the row's "next plain run" check failed on that, not on the attempt.
  opts.start_timeout_seconds *= sec::time_scale();
  spr::Runner runner(opts);
  const spr::RunnerPolicy base = opts.policy;

  std::vector<Row> rows;
  const char* only = std::getenv("SPR_SECURITY_ONLY");  // debugging: run the attempts whose id contains this
  for (const Attempt& a : kAttempts) {
    if (only && *only && a.id.find(only) == std::string::npos) continue;
    const std::string canary_name = "spr-canary-" + sec::random_hex(8);
    const std::string marker = "SPRMARK" + sec::random_hex(8);
    json input = {{"canary", "/tmp/" + canary_name},     {"shm", "/dev/shm/" + canary_name},
                  {"secret_path", secret_path},          {"home_secret", home_secret},
                  {"port", listener.port()},             {"sup", static_cast<int>(getpid())},
                  {"decoy", static_cast<int>(decoy.pid())}, {"marker", marker}};
    spr::RunnerPolicy policy = base;
    if (a.policy) policy = spr::RunnerPolicy::from_json(json::parse(a.policy), base);

    // Baseline: a warm pool, its processes and threads.
    runner.run("result = 0", json::object());
    // Settled: the count stays the same over three samples (a fork-mode worker forks its next run's
    // child once idle; that spare belongs to the baseline).
    std::vector<sec::ProcInfo> before;
    for (int i = 0, same = 0; i < 40 && same < 3; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
      auto now = sec::descendants(getpid(), {decoy.pid()});
      same = i > 0 && now.size() == before.size() ? same + 1 : 0;
      before = std::move(now);
    }
    const std::size_t base_procs = before.size();
    const int base_threads = sec::total_threads(before);
    const std::size_t err_offset = tap.size();
    sec::reset_peak_rss();
    const long peak_before = sec::peak_rss_kb();

    Obs o;
    o.attack = runner.run(a.code, input, policy);
    o.supervisor_peak_growth_kb = sec::peak_rss_kb() - peak_before;
    if (!a.victim.empty()) {
      o.vsecret = "VICTIM" + sec::random_hex(10);
      o.victim = runner.run(a.victim, {{"vsecret", o.vsecret}});
    }
    if (!a.followup.empty()) o.followup = runner.run(a.followup, input);
    if (a.settle_ms) std::this_thread::sleep_for(std::chrono::milliseconds(a.settle_ms));

    std::vector<std::string> escapes;
    // Processes and threads: nothing new survives the run (a respawned worker replaces a dead one).
    std::vector<sec::ProcInfo> after;
    for (int i = 0; i < 60; ++i) {
      after = sec::descendants(getpid(), {decoy.pid()});
      bool foreign = false;
      for (const auto& p : after) foreign = foreign || p.comm != "spr-worker";
      if (after.size() <= base_procs && sec::total_threads(after) <= base_threads && !foreign) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    {
      bool foreign = false;
      for (const auto& p : after) foreign = foreign || p.comm != "spr-worker";
      if (after.size() > base_procs || foreign)
        escapes.push_back("descendant processes " + std::to_string(base_procs) + " -> " + std::to_string(after.size()));
      else if (sec::total_threads(after) > base_threads)
        escapes.push_back("threads in the sandbox " + std::to_string(base_threads) + " -> " +
                          std::to_string(sec::total_threads(after)) + " after the run ended");
    }
    o.host_stderr = tap.since(err_offset);

    if (!sec::files_with_prefix("/tmp", canary_name).empty()) escapes.push_back("canary file created under /tmp");
    if (!sec::files_with_prefix("/dev/shm", canary_name).empty()) escapes.push_back("canary file created under /dev/shm");
    sec::remove_with_prefix("/tmp", canary_name);
    sec::remove_with_prefix("/dev/shm", canary_name);
    if (listener.connections(20) > 0) escapes.push_back("the host listener received a connection");
    if (!decoy.alive()) {
      escapes.push_back("the decoy process outside the sandbox was killed");
      decoy.respawn();
    }
    for (const spr::RunResult* r : {&o.attack, &o.followup}) {
      const std::string out = all_output(*r);
      if (sec::contains(out, token)) escapes.push_back("secret token in the run's output");
      if (sec::contains(out, "ESCAPED")) escapes.push_back("the run obtained a forbidden capability (result ESCAPED)");
    }
    if (a.id == "read.listdir_tmp" && sec::contains(o.attack.result.dump(), name_token))
      escapes.push_back("listed /tmp (a host directory outside every readable root)");
    if (sec::contains(o.host_stderr, marker)) escapes.push_back("the run wrote to the host's stderr");
    if (sec::contains(o.host_stderr, token)) escapes.push_back("secret token on the host's stderr");
    if (a.check) {
      std::string s = a.check(o);
      if (!s.empty()) escapes.push_back(s);
    }
    if (!a.cleanup.empty()) runner.run(a.cleanup, input);

    // The supervisor is alive (we are running) and still answers a plain run correctly.
    spr::RunResult ping = runner.run("result = 6 * 7", json::object());
    if (!ping.ok || ping.result != json(42))
      escapes.push_back("the next plain run failed: " + ping.error.value_or("?"));

    Row row{a.id, a.family, sec::layer_of(o.attack), "", escapes.empty()};
    if (escapes.empty() && o.attack.error) row.detail = "err: " + o.attack.error->substr(0, 90);
    if (!escapes.empty()) {
      std::string all;
      for (const auto& e : escapes) all += (all.empty() ? "" : "; ") + e;
      row.detail = all;
      const bool documented = a.documented_ns && iso == spr::Isolation::namespace_;
      if (documented) {
        row.contained = true;
        row.layer = "shared (documented)";
      } else {
        row.layer = "ESCAPED";
      }
    }
    INFO("attempt " << a.id << " [" << mode << "]: " << row.detail << " | error: " << o.attack.error.value_or("-"));
    CHECK(row.contained);
    rows.push_back(row);
  }

  // A filter that names no attempt ran nothing: that is a typo, not a pass.
  if (only && *only)
    REQUIRE_MESSAGE(!rows.empty(), "SPR_SECURITY_ONLY='" << std::string(only) << "' matches no attempt id");

  // The summary table: printed, and appended to $SPR_SECURITY_REPORT when set.
  std::ostringstream t;
  std::map<std::string, int> per_layer;
  int contained = 0;
  t << "\n== security report, isolation " << mode << " ==\n";
  t << std::left << std::setw(44) << "attempt" << std::setw(16) << "family" << std::setw(10) << "contained"
    << "layer\n";
  for (const auto& r : rows) {
    t << std::left << std::setw(44) << r.id << std::setw(16) << r.family << std::setw(10)
      << (r.contained ? "yes" : "NO") << r.layer << (r.detail.empty() ? "" : "  (" + r.detail + ")") << "\n";
    contained += r.contained ? 1 : 0;
    ++per_layer[r.layer];
  }
  t << "contained " << contained << "/" << rows.size() << " [" << mode << "]; per layer:";
  for (const auto& [layer, n] : per_layer) t << " " << layer << "=" << n << ";";
  t << "\n";
  std::cout << t.str() << std::flush;
  if (const char* path = std::getenv("SPR_SECURITY_REPORT"); path && *path) {
    std::ofstream out(path, std::ios::app);
    out << t.str();
  }
  unlink(secret_path.c_str());
  unlink(home_secret.c_str());
}
