// Host function calls of one run: each frame checked before anything runs, the function run on a helper thread under the run's deadline.
#include "detail/host_calls.hpp"

#include <poll.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/outcome.hpp"
#include "common/protocol.hpp"

namespace spr::detail {

namespace {

constexpr std::size_t kMaxErrorBytes = 64u << 10;  // a host exception's message, as the run sees it
constexpr auto kDeathCheck = std::chrono::milliseconds(10);  // how often a wait looks at the worker

bool identifier(const std::string& name) {
  if (name.empty() || name[0] == '_' || (name[0] >= '0' && name[0] <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool dead(int pidfd) {
  if (pidfd < 0) return false;
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

std::string cut(std::string s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  s.resize(n);
  return s;
}

// The answer frame, written as text: the value's JSON is made once, for its size and the frame.
std::string return_frame(std::uint64_t id, std::uint64_t call, const std::string* value_text,
                         const std::optional<std::string>& error, bool limit) {
  std::string text = "{\"call\":" + std::to_string(call);
  if (error) text += ",\"error\":" + dump_json(json(cut(*error, kMaxErrorBytes)));
  text += ",\"id\":" + std::to_string(id);
  if (limit) text += ",\"limit\":true";
  text += ",\"type\":\"host_return\",\"value\":";
  text += value_text ? *value_text : std::string("null");
  text += '}';
  return text;
}

}  // namespace

void check_function_names(const HostFunctions& functions) {
  for (const auto& [name, fn] : functions) {
    if (!identifier(name))
      throw PolicyError("host function name '" + cut(name, 64) +
                        "' must be an identifier (ASCII letters, digits, '_') that does not start with '_' or a digit");
    if (!fn) throw PolicyError("host function '" + name + "' is empty");
  }
}

// The run's helper thread and what passes between it and the thread that waits for the run. Shared:
// a function still busy when its run ends keeps this alive until it returns (its answer is dropped).
struct HostCalls::Helper {
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<const HostFunctions> owner;  // keeps the functions alive as long as the thread
  const HostFunction* fn = nullptr;
  HostCall call;
  bool pending = false, done = false, quit = false;
  json value;
  std::optional<std::string> error;

  static void loop(const std::shared_ptr<Helper>& h) {
    std::unique_lock<std::mutex> lk(h->mu);
    for (;;) {
      h->cv.wait(lk, [&] { return h->pending || h->quit; });
      if (h->quit) return;  // the run ended: nothing starts after it
      h->pending = false;
      const HostFunction* f = h->fn;
      HostCall c = std::move(h->call);
      lk.unlock();
      json v;
      std::optional<std::string> err;
      try {
        v = (*f)(c);
      } catch (const std::exception& e) {
        err = *e.what() ? e.what() : "host function '" + c.name + "' failed";
      } catch (...) {
        err = "host function '" + c.name + "' failed";
      }
      lk.lock();
      h->value = std::move(v);
      h->error = std::move(err);
      h->done = true;
      h->cv.notify_all();
    }
  }
};

HostCalls::HostCalls(std::shared_ptr<const HostFunctions> runner, const HostFunctions* run) : runner_(std::move(runner)) {
  if (run && !run->empty()) {
    auto merged = std::make_shared<HostFunctions>(*run);
    if (runner_) merged->insert(runner_->begin(), runner_->end());  // insert keeps the run's on a clash
    merged_ = std::move(merged);
    table_ = merged_.get();
  } else if (runner_ && !runner_->empty()) {
    table_ = runner_.get();
  }
  if (table_)
    for (const auto& [name, fn] : *table_) names_.push_back(name);
}

HostCalls::~HostCalls() {
  if (!helper_) return;
  {
    std::lock_guard<std::mutex> lk(helper_->mu);
    helper_->quit = true;
  }
  helper_->cv.notify_all();
}

bool HostCalls::looks_like_call(const std::string& frame) {
  static constexpr std::string_view kTail = "\"type\":\"host_call\"}";
  return frame.size() >= kTail.size() && std::string_view(frame).substr(frame.size() - kTail.size()) == kTail;
}

HostCalls::Step HostCalls::answer(const std::string& frame, std::uint64_t id, const RunnerPolicy& policy, int sock,
                                  int pidfd, Clock::time_point deadline, std::string& why) {
  protocol::HostCall c;
  try {
    c = protocol::decode_as<protocol::HostCall>(frame);
  } catch (const protocol::ProtocolError& e) {
    why = std::string("malformed host call: ") + e.what();
    return Step::refused;
  }
  if (c.id != id) {
    why = "a host call for another run";
    return Step::refused;
  }
  if (c.call != calls_ + 1) {
    why = "a host call out of order";
    return Step::refused;
  }
  if (!table_ || table_->find(c.name) == table_->end()) {
    why = "a call of an undeclared host function '" + cut(c.name, 64) + "'";
    return Step::refused;
  }
  const std::uint64_t max_bytes = static_cast<std::uint64_t>(policy.host_call_kb()) * 1024;
  if (frame.size() > max_bytes + c.name.size() + kHostCallFrameOverhead) {
    // The engine refuses such a call before sending it: a worker that sends one is not ours any more.
    why = outcome::host_call_too_large("arguments", policy.host_call_kb());
    limit_ = why;
    return Step::over_limit;
  }
  ++calls_;
  std::string text;
  if (limit_ || calls_ > static_cast<std::uint64_t>(policy.max_host_calls)) {
    if (!limit_) limit_ = outcome::host_calls_exceeded(policy.max_host_calls);
    text = return_frame(id, c.call, nullptr, limit_, true);
  } else {
    if (!helper_) {
      helper_ = std::make_shared<Helper>();
      helper_->owner = merged_ ? merged_ : runner_;
      std::thread(Helper::loop, helper_).detach();
    }
    std::unique_lock<std::mutex> lk(helper_->mu);
    helper_->fn = &table_->at(c.name);
    helper_->call = HostCall{std::move(c.name), std::move(c.args), std::move(c.kwargs), id, c.call};
    helper_->pending = true;
    helper_->done = false;
    helper_->cv.notify_all();
    while (!helper_->done) {
      const auto now = Clock::now();
      if (now >= deadline) return Step::timed_out;  // the destructor tells the helper to stop once it returns
      helper_->cv.wait_until(lk, std::min(deadline, now + kDeathCheck));
      if (!helper_->done && dead(pidfd)) return Step::gone;
    }
    json value = std::move(helper_->value);
    std::optional<std::string> error = std::move(helper_->error);
    lk.unlock();
    if (error) {
      text = return_frame(id, c.call, nullptr, error, false);
    } else if (json_depth(value) > kMaxJsonDepth) {
      text = return_frame(id, c.call, nullptr, std::string("the host function's answer is nested too deeply"), false);
    } else {
      const std::string value_text = dump_json(value);
      if (value_text.size() > max_bytes) {
        limit_ = outcome::host_call_too_large("answer", policy.host_call_kb());
        text = return_frame(id, c.call, nullptr, limit_, true);
      } else {
        text = return_frame(id, c.call, &value_text, std::nullopt, false);
      }
    }
  }
  const IoStatus s = send_frame(sock, text, deadline);
  if (s == IoStatus::ok) return Step::answered;
  return s == IoStatus::timeout ? Step::timed_out : Step::gone;
}

}  // namespace spr::detail
