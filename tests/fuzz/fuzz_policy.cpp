// Fuzz target: policy files. The input is the text of a TOML policy file. RunnerPolicy::from_toml
// documents PolicyError as its only failure; any other exception escaping is a bug (libFuzzer
// reports it as a crash). An accepted policy must survive to_json/from_json unchanged.
#include <string_view>

#include "common/frame.hpp"
#include "fuzz_common.hpp"
#include "spr/runner.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  spr::RunnerPolicy p;
  try {
    p = spr::RunnerPolicy::from_toml(text);
  } catch (const spr::PolicyError&) {
    return 0;
  }
  p.validate();
  const nlohmann::json out = p.to_json();
  (void)spr::detail::dump_json(out);
  spr::RunnerPolicy again;
  try {
    again = spr::RunnerPolicy::from_json(out);
  } catch (const spr::PolicyError& e) {
    spr_fuzz::bug("policy from to_json() refused:", e.what());
  }
  // Compared as text: extra_globals may hold NaN (TOML `nan`), which never equals itself.
  if (spr::detail::dump_json(again.to_json()) != spr::detail::dump_json(out))
    spr_fuzz::bug("policy to_json/from_json round trip differs");
  return 0;
}
