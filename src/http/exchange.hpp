// One HTTP request as the API sees it, and the ways to answer it (whole, or as a stream of chunks).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace spr::http {

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query
  std::string query;   // after '?', undecoded
  std::string body;
  std::optional<std::size_t> token;  // which configured token authenticated it; nullopt without a token file
  std::string session_id;            // the X-Session-Id header (a proxy's choice of a new session's id)
};

using Headers = std::vector<std::pair<std::string, std::string>>;

// Implemented by the connection. Every method may be called from any thread; an exchange is answered
// once (a second answer is ignored), either by send() or by stream_begin() ... stream_end().
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual const Request& request() const = 0;
  // `error_kind` goes to the access log ("" when the request succeeded).
  virtual void send(int status, std::string body, std::string content_type, Headers headers,
                    std::string error_kind) = 0;
  virtual void stream_begin(std::string content_type) = 0;
  virtual void stream_write(std::string data) = 0;
  virtual void stream_end(std::string error_kind) = 0;
  // Bytes given to stream_write and not yet written to the client: a producer that can wait keeps it
  // small (a client that reads slowly then slows the producer instead of filling the server's memory).
  virtual std::size_t stream_backlog() const = 0;
  // True once the client is gone (a write failed or timed out): nothing more reaches it.
  virtual bool stream_broken() const = 0;
};

using ExchangePtr = std::shared_ptr<Exchange>;

}  // namespace spr::http
