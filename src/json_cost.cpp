// A SAX pass over a JSON text that adds up the heap its parsed tree will take, and stops early.
#include "detail/json_cost.hpp"

#include <string>

namespace spr::detail {

namespace {

using json = nlohmann::json;

// Per-event costs of nlohmann::json (libstdc++): every value is 16 bytes in its parent; an array's or
// object's own block and malloc's header; a map node with its key; a string longer than the
// small-string buffer on the heap.
constexpr std::size_t kValue = sizeof(json);
constexpr std::size_t kContainer = 48;
constexpr std::size_t kMember = 64;
std::size_t text_cost(std::size_t n) { return n > 15 ? n + 17 : 0; }

struct CostSax {
  std::size_t budget;
  RequestCost& out;
  int depth = 0;
  bool id_next = false;  // the last key at depth 1 was "id": its value is the request's id

  bool add(std::size_t n) {
    out.bytes += n;
    if (out.bytes <= budget) return true;
    out.over = true;
    return false;  // stops the pass
  }
  template <class T>
  bool scalar(T&& v, std::size_t extra = 0) {
    if (id_next && depth == 1) out.id = json(std::forward<T>(v));
    id_next = false;
    return add(kValue + extra);
  }
  bool null() { return scalar(nullptr); }
  bool boolean(bool v) { return scalar(v); }
  bool number_integer(json::number_integer_t v) { return scalar(v); }
  bool number_unsigned(json::number_unsigned_t v) { return scalar(v); }
  bool number_float(json::number_float_t v, const std::string&) { return scalar(v); }
  bool string(std::string& v) { return scalar(v, text_cost(v.size())); }
  bool binary(json::binary_t&) { return add(kValue + kContainer); }
  bool start_object(std::size_t) { return open(); }
  bool start_array(std::size_t) { return open(); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(std::string& k) {
    id_next = depth == 1 && k == "id";
    return add(kMember + text_cost(k.size()));
  }
  bool parse_error(std::size_t, const std::string&, const json::exception&) {
    out.malformed = true;
    return false;
  }

 private:
  bool open() {
    id_next = false;
    ++depth;
    return add(kValue + kContainer);
  }
  bool close() {
    --depth;
    return true;
  }
};

}  // namespace

RequestCost measure_request(std::string_view line, std::size_t budget) {
  RequestCost out;
  CostSax sax{budget, out};
  json::sax_parse(line.begin(), line.end(), &sax);
  return out;
}

std::string parse_cost_refusal(std::string_view text, std::size_t budget) {
  if (text.size() * kMaxCostPerByte <= budget) return {};
  if (!measure_request(text, budget).over) return {};
  return "its " + std::to_string(text.size()) + " bytes would take more than " + std::to_string(budget >> 20) +
         " MiB once parsed (values nested or packed too densely)";
}

}  // namespace spr::detail
