// The HTTP service's transport on Boost.Beast: one strand per connection, bounded reads (header, body,
// time), bearer-token auth, JSON access log lines, and a drain on SIGTERM.
#include "http/server.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <thread>

#include "common/frame.hpp"

namespace spr::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

std::chrono::milliseconds ms(double seconds) {
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

// One write(2) per line, so lines from several threads never interleave. The log is best effort:
// a failed write is not retried past EINTR (there is nowhere to report it).
void log_line(const json& j) {
  const std::string s = detail::dump_json(j) + "\n";
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(STDERR_FILENO, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const long millis =
      static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[80];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  return buf;
}

// Compares every byte of both strings whatever they hold, so the time taken says nothing about
// how much of a guess was right.
bool equal_constant_time(std::string_view a, std::string_view b) {
  const std::size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  return diff == 0;
}

class Connection;

struct Shared {
  Shared(const ServerOptions& o, Api& a) : options(o), api(a) {}
  const ServerOptions& options;
  Api& api;
  std::atomic<std::size_t> connections{0};
  std::atomic<bool> draining{false};
  std::mutex mu;
  std::map<Connection*, std::weak_ptr<Connection>> live;  // for closing idle connections on drain

  // Which token the Authorization header carries (every token is compared, none skipped).
  std::optional<std::size_t> authenticate(std::string_view header) const {
    constexpr std::string_view scheme = "Bearer ";
    if (header.size() <= scheme.size() || header.substr(0, scheme.size()) != scheme) return std::nullopt;
    const std::string_view given = header.substr(scheme.size());
    std::optional<std::size_t> found;
    for (std::size_t i = 0; i < options.tokens.size(); ++i)
      if (equal_constant_time(given, options.tokens[i])) found = i;
    return found;
  }
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, Shared& shared) : stream_(std::move(socket)), shared_(shared) {
    ++shared_.connections;
    boost::system::error_code ec;
    const auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string();
  }
  ~Connection() { --shared_.connections; }

  void start() {
    {
      std::lock_guard<std::mutex> lk(shared_.mu);
      shared_.live[this] = weak_from_this();
    }
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read(); });
  }

  // Drain: a connection between requests is closed now; one answering a request closes after it.
  void close_if_idle() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      if (!self->busy_) self->close();
    });
  }

  // The answers of the exchange numbered `seq` (a stale exchange's calls are ignored).
  void send(std::uint64_t seq, int status, std::string body, std::string type, Headers headers, std::string kind) {
    net::post(stream_.get_executor(),
              [self = shared_from_this(), seq, status, body = std::move(body), type = std::move(type),
               headers = std::move(headers), kind = std::move(kind)]() mutable {
                self->do_send(seq, status, std::move(body), std::move(type), std::move(headers), std::move(kind));
              });
  }
  void stream_begin(std::uint64_t seq, std::string type) {
    net::post(stream_.get_executor(),
              [self = shared_from_this(), seq, type = std::move(type)] { self->do_stream_begin(seq, type); });
  }
  void stream_write(std::uint64_t seq, std::string data) {
    backlog_ += data.size();
    net::post(stream_.get_executor(), [self = shared_from_this(), seq, data = std::move(data)]() mutable {
      if (seq != self->seq_ || !self->streaming_ || self->stream_done_ || self->broken_) {
        self->backlog_ -= std::min(self->backlog_.load(), data.size());
        return;
      }
      self->chunks_.push_back(std::move(data));
      self->write_next();
    });
  }
  void stream_end(std::uint64_t seq, std::string kind) {
    net::post(stream_.get_executor(), [self = shared_from_this(), seq, kind = std::move(kind)]() mutable {
      if (seq != self->seq_ || !self->streaming_ || self->stream_done_) return;
      self->stream_done_ = true;
      self->kind_ = std::move(kind);
      self->write_next();
    });
  }

 private:
  void read() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(shared_.options.max_header_bytes));
    parser_->body_limit(shared_.options.max_body_bytes);
    // One deadline for the whole request, header and body: a client that trickles bytes is dropped.
    stream_.expires_after(ms(shared_.options.read_timeout_seconds));
    // The header first: a request without a valid token is answered before its body is read, so a client
    // without one cannot make the server hold bodies.
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read(ec);
    token_.reset();
    if (!shared_.options.tokens.empty()) {
      auto& m = parser_->get();
      const auto header = m[bhttp::field::authorization];
      token_ = shared_.authenticate(std::string_view(header.data(), header.size()));
      // The playground page is static and holds nothing; its calls carry the token typed into it.
      const std::string target(m.target());
      const std::string path = target.substr(0, target.find('?'));
      const bool open = path == "/healthz" || (path == "/" && m.method() == bhttp::verb::get);
      if (!token_ && !open)
        return refuse(401, "unauthorized", "this endpoint needs 'Authorization: Bearer <token>'",
                      {{"WWW-Authenticate", "Bearer"}});
    }
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](beast::error_code e, std::size_t) { self->on_read(e); });
  }

  void on_read(beast::error_code ec) {
    if (ec) {
      if (ec == beast::error::timeout) {
        // Bytes may wait in the buffer unparsed (an incomplete first line): they count as a request begun.
        if (parser_->got_some() || buffer_.size() > 0) {
          shared_.api.metrics().refused("slow_client");
          log_line({{"time", utc_now()}, {"event", "dropped"}, {"reason", "slow_client"}, {"remote", remote_}});
        }
        return close();
      }
      if (ec == bhttp::error::body_limit)
        return refuse(413, "body_too_large",
                      "the body is larger than " + std::to_string(shared_.options.max_body_bytes) + " bytes");
      if (ec == bhttp::error::header_limit)
        return refuse(
            431, "headers_too_large",
            "the request's header is larger than " + std::to_string(shared_.options.max_header_bytes) + " bytes");
      if (ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
          ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message)
        return refuse(400, "bad_request", "malformed HTTP request: " + ec.message());
      return close();  // end of stream, reset, or closed by the drain
    }
    busy_ = true;
    ++seq_;
    answered_ = false;
    streaming_ = stream_done_ = header_written_ = last_written_ = false;
    chunks_.clear();
    backlog_ = 0;
    started_ = Clock::now();
    auto& m = parser_->get();
    version_ = m.version();
    keep_alive_ = m.keep_alive();
    Request req;
    req.method = std::string(m.method_string());
    const std::string target(m.target());
    const std::size_t q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) req.query = target.substr(q + 1);
    req.body = std::move(m.body());
    req.session_id = std::string(m["X-Session-Id"]);
    method_ = req.method;
    path_ = req.path;
    req.token = token_;  // checked with the header (on_header)
    parser_.reset();
    shared_.api.handle(std::make_shared<ConnExchange>(shared_from_this(), seq_, std::move(req)));
  }

  // Answers a request that could not be read whole, then closes (its unread rest would be taken
  // for the next request).
  void refuse(int status, const std::string& reason, const std::string& message, Headers headers = {}) {
    shared_.api.metrics().refused(reason);
    busy_ = true;
    ++seq_;
    answered_ = false;
    keep_alive_ = false;
    started_ = Clock::now();
    if (parser_ && parser_->is_header_done()) {
      method_ = std::string(parser_->get().method_string());
      path_ = std::string(parser_->get().target().substr(0, parser_->get().target().find('?')));
      version_ = parser_->get().version();
    } else {
      method_ = "-";
      path_ = "-";
    }
    do_send(seq_, status, detail::dump_json({{"error", message}, {"error_kind", reason}}) + "\n", "application/json",
            std::move(headers), reason);
  }

  bool keep_alive() const { return keep_alive_ && !shared_.draining; }

  void do_send(std::uint64_t seq, int status, std::string body, std::string type, Headers headers, std::string kind) {
    if (seq != seq_ || answered_) return;
    answered_ = true;
    status_ = status;
    kind_ = std::move(kind);
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>(static_cast<bhttp::status>(status), version_);
    res->set(bhttp::field::server, "safe-py-runner");
    res->set(bhttp::field::content_type, type);
    res->set(bhttp::field::cache_control, "no-store");
    for (const auto& [name, value] : headers) res->set(name, value);
    res->keep_alive(keep_alive());
    res->body() = std::move(body);
    res->prepare_payload();
    stream_.expires_after(ms(shared_.options.write_timeout_seconds));
    bhttp::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, std::size_t) {
      self->finished(ec, !res->keep_alive());
    });
  }

  void do_stream_begin(std::uint64_t seq, const std::string& type) {
    if (seq != seq_ || answered_) return;
    answered_ = true;
    streaming_ = true;
    status_ = 200;
    stream_res_.emplace(bhttp::status::ok, version_);
    stream_res_->set(bhttp::field::server, "safe-py-runner");
    stream_res_->set(bhttp::field::content_type, type);
    stream_res_->set(bhttp::field::cache_control, "no-store");
    stream_res_->keep_alive(keep_alive());
    stream_res_->chunked(true);
    serializer_.emplace(*stream_res_);
    write_next();
  }

  void write_next() {
    if (writing_ || broken_) return;
    stream_.expires_after(ms(shared_.options.write_timeout_seconds));
    auto self = shared_from_this();
    if (!header_written_) {
      writing_ = true;
      bhttp::async_write_header(stream_, *serializer_, [self](beast::error_code ec, std::size_t) {
        self->writing_ = false;
        if (ec) return self->stream_failed(ec);
        self->header_written_ = true;
        self->write_next();
      });
    } else if (!chunks_.empty()) {
      writing_ = true;
      net::async_write(stream_, bhttp::make_chunk(net::buffer(chunks_.front())),
                       [self](beast::error_code ec, std::size_t) {
                         self->writing_ = false;
                         self->backlog_ -= std::min(self->backlog_.load(), self->chunks_.front().size());
                         self->chunks_.pop_front();
                         if (ec) return self->stream_failed(ec);
                         self->write_next();
                       });
    } else if (stream_done_ && !last_written_) {
      writing_ = true;
      last_written_ = true;
      net::async_write(stream_, bhttp::make_chunk_last(), [self](beast::error_code ec, std::size_t) {
        self->writing_ = false;
        self->finished(ec, !self->stream_res_->keep_alive());
      });
    }
  }

  void stream_failed(beast::error_code ec) {
    broken_ = true;
    gone_ = true;
    chunks_.clear();
    backlog_ = 0;
    finished(ec, true);
  }

  // The response is written (or could not be): log it, then read the next request or close.
  void finished(beast::error_code ec, bool close_after) {
    const double millis = std::chrono::duration<double, std::milli>(Clock::now() - started_).count();
    json line = {{"time", utc_now()},
                 {"method", method_},
                 {"path", path_},
                 {"status", status_},
                 {"duration_ms", std::round(millis * 1000) / 1000},
                 {"error_kind", kind_.empty() ? json() : json(kind_)},
                 {"remote", remote_}};
    if (ec) line["write_error"] = ec.message();
    log_line(line);
    shared_.api.metrics().request_answered(status_);
    busy_ = false;
    if (ec) return close();
    if (close_after || shared_.draining) return linger_close();
    read();
  }

  // Closes the sending side, then reads and drops what the client still sends for a moment: closing
  // with unread bytes would reset the connection and could discard the answer before the client reads it.
  void linger_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds(1));
    discard_ = std::make_shared<std::array<char, 4096>>();
    stream_.async_read_some(net::buffer(*discard_), [self = shared_from_this()](beast::error_code e, std::size_t) {
      if (e) return self->close();
      self->linger_read();
    });
  }
  void linger_read() {
    stream_.async_read_some(net::buffer(*discard_), [self = shared_from_this()](beast::error_code e, std::size_t) {
      if (e) return self->close();
      self->linger_read();
    });
  }

  void close() {
    gone_ = true;
    beast::error_code ec;
    stream_.socket().close(ec);
    std::lock_guard<std::mutex> lk(shared_.mu);
    shared_.live.erase(this);
  }

  // The Exchange the API sees for one request: its calls reach the connection only while that request
  // is the current one.
  class ConnExchange : public Exchange {
   public:
    ConnExchange(std::shared_ptr<Connection> c, std::uint64_t seq, Request r)
        : conn_(std::move(c)), seq_(seq), req_(std::move(r)) {}
    const Request& request() const override { return req_; }
    void send(int status, std::string body, std::string type, Headers h, std::string kind) override {
      conn_->send(seq_, status, std::move(body), std::move(type), std::move(h), std::move(kind));
    }
    void stream_begin(std::string type) override { conn_->stream_begin(seq_, std::move(type)); }
    void stream_write(std::string data) override { conn_->stream_write(seq_, std::move(data)); }
    void stream_end(std::string kind) override { conn_->stream_end(seq_, std::move(kind)); }
    std::size_t stream_backlog() const override { return conn_->backlog_; }
    bool stream_broken() const override { return conn_->gone_; }

   private:
    std::shared_ptr<Connection> conn_;
    std::uint64_t seq_;
    Request req_;
  };

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  Shared& shared_;
  std::string remote_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  // The request being answered (all touched on the connection's strand only).
  std::uint64_t seq_ = 0;
  std::optional<std::size_t> token_;  // the token the current request's header carried
  bool busy_ = false, answered_ = false, keep_alive_ = true;
  unsigned version_ = 11;
  std::string method_, path_, kind_;
  int status_ = 0;
  Clock::time_point started_;
  // A streamed answer: the header, then chunks in order, then the last chunk.
  std::optional<bhttp::response<bhttp::empty_body>> stream_res_;
  std::optional<bhttp::response_serializer<bhttp::empty_body>> serializer_;
  std::deque<std::string> chunks_;
  bool streaming_ = false, stream_done_ = false, header_written_ = false, last_written_ = false;
  bool writing_ = false, broken_ = false;
  // Read from other threads (a producer waiting for the client): bytes queued for the current
  // streamed answer, and whether the client is gone.
  std::atomic<std::size_t> backlog_{0};
  std::atomic<bool> gone_{false};
  std::shared_ptr<std::array<char, 4096>> discard_;
};

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(net::io_context& ioc, tcp::endpoint ep, Shared& shared)
      : ioc_(ioc), acceptor_(ioc), backoff_(ioc), shared_(shared) {
    beast::error_code ec;
    const auto fail = [&](const char* what) {
      throw std::runtime_error("cannot listen on " + ep.address().to_string() + ":" + std::to_string(ep.port()) + ": " +
                               what + ": " + ec.message());
    };
    acceptor_.open(ep.protocol(), ec);
    if (ec) fail("socket");
    acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (ec) fail("SO_REUSEADDR");
    acceptor_.bind(ep, ec);
    if (ec) fail("bind");
    acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) fail("listen");
  }
  tcp::endpoint local() const { return acceptor_.local_endpoint(); }
  void start() { accept(); }
  void stop() {
    net::post(acceptor_.get_executor(), [self = shared_from_this()] {
      beast::error_code ec;
      self->acceptor_.close(ec);
    });
  }

 private:
  void accept() {
    acceptor_.async_accept(net::make_strand(ioc_), [self = shared_from_this()](beast::error_code ec, tcp::socket s) {
      if (ec == net::error::operation_aborted || !self->acceptor_.is_open()) return;
      if (!ec) {
        if (self->shared_.connections >= self->shared_.options.max_connections) {
          self->shared_.api.metrics().refused("too_many_connections");
          beast::error_code ignored;
          s.close(ignored);
        } else {
          std::make_shared<Connection>(std::move(s), self->shared_)->start();
        }
        self->accept();
        return;
      }
      // Out of descriptors (EMFILE, ENFILE) or memory: the pending connection stays queued, so accepting
      // again at once would fail again at once and spin. Wait a little; connections closing free some.
      self->shared_.api.metrics().refused("accept_failed");
      self->backoff_.expires_after(std::chrono::milliseconds(100));
      self->backoff_.async_wait([self](beast::error_code e) {
        if (!e && self->acceptor_.is_open()) self->accept();
      });
    });
  }
  net::io_context& ioc_;
  tcp::acceptor acceptor_;
  net::steady_timer backoff_;
  Shared& shared_;
};

}  // namespace

bool is_loopback(const std::string& address) {
  beast::error_code ec;
  const auto a = net::ip::make_address(address, ec);
  if (ec) return false;
  if (a.is_v4()) return a.to_v4().is_loopback();
  const auto v6 = a.to_v6();
  if (v6.is_v4_mapped()) return net::ip::make_address_v4(net::ip::v4_mapped, v6).is_loopback();
  return v6.is_loopback();
}

// Each connection holds a descriptor, and workers and sessions hold pipes: the soft RLIMIT_NOFILE is raised
// to the hard one, and a --max-connections it cannot hold is refused rather than met with failed accepts.
static void fit_descriptor_limit(std::size_t max_connections) {
  constexpr rlim_t kReserve = 256;  // workers' pipes, sessions, the runner's own files
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  if (lim.rlim_cur != RLIM_INFINITY && max_connections + kReserve > lim.rlim_cur)
    throw std::runtime_error("--max-connections " + std::to_string(max_connections) + " needs " +
                             std::to_string(max_connections + kReserve) + " descriptors; the limit is " +
                             std::to_string(lim.rlim_cur) + " (raise it with ulimit -n, or lower --max-connections)");
}

int serve(Runner& runner, const RunnerPolicy& base, const ServerOptions& options) {
  beast::error_code ec;
  const auto address = net::ip::make_address(options.address, ec);
  if (ec) throw std::runtime_error("cannot listen on '" + options.address + "': not an IP address");
  if (options.tokens.empty() && !is_loopback(options.address))
    throw std::runtime_error(
        "without --token-file the server listens on a loopback address only (127.0.0.1 or ::1), not " +
        options.address);

  // Destroyed in reverse: the API first (what it still holds of a connection goes while the
  // io_context lives), then the io_context (its queued handlers hold connections), then `shared`,
  // which every connection uses until its destructor.
  std::unique_ptr<Shared> shared_state;
  net::io_context ioc(static_cast<int>(options.threads));
  // Before the API starts (it waits for a worker): a signal that comes meanwhile is kept for async_wait.
  net::signal_set signals(ioc, SIGTERM, SIGINT);
  // While draining, the listener is closed and a connection waiting for its run has no operation
  // pending: without this guard run() would return and the run's answer would never be written.
  auto work = net::make_work_guard(ioc);
  auto api_owner = std::make_unique<Api>(runner, base, options.api);
  Api& api = *api_owner;
  shared_state = std::make_unique<Shared>(options, api);
  Shared& shared = *shared_state;
  api.connections = [&shared] { return shared.connections.load(); };

  fit_descriptor_limit(options.max_connections);
  auto listener = std::make_shared<Listener>(ioc, tcp::endpoint(address, options.port), shared);
  listener->start();
  log_line({{"time", utc_now()},
            {"event", "listening"},
            {"address", listener->local().address().to_string()},
            {"port", listener->local().port()},
            {"auth", options.tokens.empty() ? "none (loopback only)" : "bearer token"}});

  std::promise<int> signalled;
  auto signal_future = signalled.get_future();
  signals.async_wait([&](beast::error_code e, int sig) {
    if (e) return;
    shared.draining = true;
    api.begin_drain();
    listener->stop();
    std::lock_guard<std::mutex> lk(shared.mu);
    for (auto& [ptr, weak] : shared.live)
      if (auto c = weak.lock()) c->close_if_idle();
    signalled.set_value(sig);
  });

  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < std::max<std::size_t>(1, options.threads); ++i)
    threads.emplace_back([&ioc] { ioc.run(); });

  const int sig = signal_future.get();
  const auto grace_end = Clock::now() + ms(options.grace_seconds);
  log_line({{"time", utc_now()}, {"event", "draining"}, {"signal", sig}, {"runs_in_flight", api.in_flight()}});
  while (Clock::now() < grace_end && (api.in_flight() > 0 || shared.connections > 0))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const std::size_t unfinished = api.in_flight();
  // Runs still going are stopped (they answer worker_unavailable); sessions are closed.
  runner.shutdown();
  api.stop();
  const auto flush_end = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < flush_end && shared.connections > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  work.reset();
  ioc.stop();
  for (auto& t : threads) t.join();
  log_line({{"time", utc_now()}, {"event", "stopped"}, {"runs_stopped_at_grace_end", unfinished}});
  return 0;
}

}  // namespace spr::http
