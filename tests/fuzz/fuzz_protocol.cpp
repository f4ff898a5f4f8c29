// Fuzz target: protocol::decode of one frame's text, for every message type. Expected refusals are
// ProtocolError only; whatever decodes must encode, decode again to the same type, and re-encode to the
// same text (one encode/decode pair per message, no field lost or invented).
#include <string>
#include <string_view>

#include "common/protocol.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  spr::protocol::Message m;
  try {
    m = spr::protocol::decode(text);
  } catch (const spr::protocol::ProtocolError&) {
    return 0;
  }
  const std::string once = spr::protocol::encode(m);
  spr::protocol::Message again;
  try {
    again = spr::protocol::decode(once);
  } catch (const spr::protocol::ProtocolError& e) {
    spr_fuzz::bug("encode() produced a frame decode() refuses:", e.what());
  }
  if (again.index() != m.index()) spr_fuzz::bug("round trip changed the message type");
  if (spr::protocol::encode(again) != once) spr_fuzz::bug("encode/decode round trip differs:", once.c_str());
  return 0;
}
