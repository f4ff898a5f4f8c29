// Unit tests of the fork parent's in-place JSON scanner: what it accepts, the members it finds, the
// sizes it measures (never above what the codec charges an honest result, so honest replies pass).
#include <doctest/doctest.h>

#include <string>

#include "engine/codec.hpp"
#include "common/frame.hpp"
#include "engine/engine.hpp"
#include "common/json_scan.hpp"
#include "common/json_text.hpp"
#include "engine/py.hpp"

namespace embed = spr::embed;
namespace scan = spr::json_scan;
using spr::json;

namespace {

// The smallest byte budget the codec accepts for `v` (its exact charge).
std::uint64_t codec_charge(const json& v) {
  static const std::string error = [] {
    embed::EngineOptions o;
    o.preload = false;
    return embed::initialize(o);
  }();
  REQUIRE_MESSAGE(error.empty(), error);
  embed::py::Ref obj(embed::codec::to_python(v));
  REQUIRE(obj);
  std::uint64_t lo = 0, hi = 1 << 20;
  while (lo < hi) {
    const std::uint64_t mid = (lo + hi) / 2;
    if (embed::codec::from_python(obj.get(), mid).status == embed::codec::Status::ok)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

}  // namespace

TEST_CASE("json_scan: valid JSON is accepted, malformed JSON is not") {
  for (const char* ok : {"{}", "[]", "0", "-1.5e+3", "\"a\\u00e9\\n\"", " {\"a\": [1, true, null, {\"b\": \"c\"}]} ",
                         "[[[[]]]]", "{\"a\":{},\"b\":[]}"})
    CHECK_MESSAGE(scan::valid(ok), ok);
  for (const char* bad : {"", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "\"abc", "\"\\x\"", "\"\\u12g4\"", "01", "1.",
                          "-", "tru", "{} {}", "[1 2]", "{1:2}", "\"a\nb\""})
    CHECK_MESSAGE(!scan::valid(bad), bad);
  CHECK(scan::valid(std::string(scan::kMaxDepth, '[') + std::string(scan::kMaxDepth, ']')));
  CHECK_FALSE(scan::valid(std::string(scan::kMaxDepth + 1, '[') + std::string(scan::kMaxDepth + 1, ']')));
}

TEST_CASE("json_scan: members are found in place, the last duplicate wins, nested ones are not top level") {
  const std::string o = R"({"id": 7, "policy": {"timeout_seconds": 2.5, "id": 9}, "code": "x", "id": 8})";
  REQUIRE(scan::member(o, "id"));
  CHECK(*scan::member(o, "id") == "8");
  CHECK(scan::number(*scan::member(*scan::member(o, "policy"), "timeout_seconds")) == doctest::Approx(2.5));
  CHECK_FALSE(scan::member(o, "timeout_seconds"));
  CHECK_FALSE(scan::number("\"7\""));
  int members = 0;
  CHECK(scan::for_each_member(o, [&](std::string_view, std::string_view) { ++members; }));
  CHECK(members == 4);
  CHECK_FALSE(scan::for_each_member("[1]", [](std::string_view, std::string_view) {}));
}

TEST_CASE("json_scan: decoded sizes match the parser's, escapes and surrogate pairs included") {
  for (const std::string& text : {std::string("plain"), std::string("tab\tquote\"slash\\"), std::string("\x01\x1f"),
                                  std::string("é ü ß"), std::string("€ 中"), std::string("😀 emoji"), std::string()}) {
    for (const std::string& token : {json(text).dump(), json(text).dump(-1, ' ', true)}) {  // UTF-8 and \u escapes
      CHECK_MESSAGE(scan::decoded_size(token) == json::parse(token).get<std::string>().size(), token);
    }
  }
}

TEST_CASE("json_scan: an honest result never measures above the codec's charge") {
  const json values[] = {nullptr,
                         true,
                         false,
                         0,
                         -123456789,
                         1.5e300,
                         "text",
                         "é\n\"\\😀",
                         json::array(),
                         json::object(),
                         json::array({1, "a", nullptr, json::array({2.5, false})}),
                         json{{"k", "v"}, {"n", json::array({1, 2, 3})}, {"é", json{{"x", nullptr}}}},
                         json(std::string(3000, '\x01'))};
  for (const json& v : values) {
    const std::string text = spr::detail::dump_json(v);
    CHECK_MESSAGE(scan::result_charge(text) <= codec_charge(v), text.substr(0, 60));
    CHECK(scan::result_charge(text) > 0);
  }
  // Beyond 64 bits the codec sends the decimal text; the scanner still measures it no higher.
  const json big = json::parse("[18446744073709551616]");
  CHECK(scan::result_charge(spr::detail::dump_json(big)) <= codec_charge(big));
}

TEST_CASE("json_text_error: refuses what the parser refuses, without building anything") {
  using spr::detail::json_text_error;
  CHECK(json_text_error(R"({"a": [1, 2.5e3, -0, "x\u00e9\ud83d\ude00", true, null]})").empty());
  CHECK(json_text_error("  [1, 2]\n").empty());
  CHECK(json_text_error("\"caf\xc3\xa9\"").empty());
  // Each is refused by nlohmann's parser too: the check must never let through what the worker could not read.
  for (const std::string& bad : {std::string("{not json"), std::string("[1, 2"), std::string("[NaN]"),
                                std::string("[Infinity]"), std::string(R"(["\ud800"])"), std::string(R"(["\udc00x"])"),
                                std::string(R"(["\ud800\u0041"])"), std::string("[\"\xff\"]"), std::string("\"\xc0\x80\""),
                                std::string("\"\xed\xa0\x80\""), std::string("[1] [2]"), std::string("")}) {
    INFO(bad);
    CHECK_FALSE(json_text_error(bad).empty());
    CHECK_FALSE(json::accept(bad));
  }
  // Deeper than the supervisor's limit: refused as parse_json refuses it (nlohmann alone would take it).
  const std::string deep = std::string(600, '[') + std::string(600, ']');
  CHECK_FALSE(json_text_error(deep).empty());
  CHECK_THROWS(spr::detail::parse_json(deep));
}

TEST_CASE("json_scan: plain_members refuses a name written with an escape or twice, as a raw scan would misread it") {
  CHECK(scan::plain_members(R"({"type": "reply", "id": 3, "result": {"a\u0041": 1, "a\u0041": 2}})"));  // nested: any
  CHECK(scan::plain_members("{}"));
  CHECK_FALSE(scan::plain_members(R"({"result": "small", "res\u0075lt": "big"})"));
  CHECK_FALSE(scan::plain_members(R"({"type": "host_call", "typ\u0065": "reply"})"));
  CHECK_FALSE(scan::plain_members(R"({"id": 1, "id": 2})"));
  CHECK_FALSE(scan::plain_members("[1]"));
  std::string many = "{";
  for (std::size_t i = 0; i <= scan::kMaxPlainMembers; ++i) many += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":0";
  CHECK_FALSE(scan::plain_members(many + "}"));
  // What the parser sees for the refused ones: the decoded, last value, not the one a raw scan finds.
  CHECK(json::parse(R"({"result": "small", "res\u0075lt": "big"})")["result"] == "big");
  CHECK(*scan::member(R"({"result": "small", "res\u0075lt": "big"})", "result") == "\"small\"");
}

TEST_CASE("json_scan: a number costs the codec's charge whatever its spelling") {
  // "1e15" comes back as 1000000000000000.0: charged as the codec charges a float, not its four characters.
  CHECK(scan::result_charge("1e15") == 24);
  CHECK(scan::result_charge("7") == 20);
  CHECK(scan::result_charge("[1e15,2]") == 2 + 24 + 1 + 20);
  CHECK(scan::result_charge("0.1000000000000000000000000000001") == 33);  // a longer spelling costs its text
  CHECK(scan::result_charge("true") == 4);
}

TEST_CASE("json_text: a string token escapes what JSON needs and replaces bytes that are not UTF-8") {
  std::string out;
  spr::json_text::append_string(out, "a\"b\\c\n\x01 \xc3\xa9 \xf0\x9f\x99\x82");
  CHECK(out == "\"a\\\"b\\\\c\\n\\u0001 \xc3\xa9 \xf0\x9f\x99\x82\"");
  // Invalid: a lone continuation byte, a cut sequence, an overlong form, a surrogate, past U+10FFFF.
  for (const std::string& bad : {std::string("\x80"), std::string("\xe2\x82"), std::string("\xc0\xaf"),
                                std::string("\xed\xa0\x80"), std::string("\xf4\x90\x80\x80"), std::string("\xff\xfe")}) {
    CAPTURE(bad);
    out.clear();
    spr::json_text::append_string(out, "x" + bad + "y");
    CHECK(out.front() == '"');
    CHECK(out.find("\\ufffd") != std::string::npos);
    for (const char c : out) CHECK(static_cast<unsigned char>(c) < 0x80);  // nothing of the bad bytes is kept
    CHECK(spr::json::parse(out).get<std::string>().find("\xef\xbf\xbd") != std::string::npos);
  }
}
