// Writes JSON text piece by piece, for writers that build a frame in place (the fork parent's own replies).
#pragma once

#include <string>
#include <string_view>

namespace spr::json_text {

// Appends `text` as a JSON string token, into `out`'s existing capacity where possible (at most six bytes a
// byte of `text`: reserve that much and nothing is left behind in a freed buffer). Bytes that are not valid
// UTF-8 become U+FFFD (written \ufffd), as the engine's own capture replaces them: the text is a killed
// run's output, which the run could write as it liked, and the supervisor refuses a reply that is not UTF-8.
void append_string(std::string& out, std::string_view text);

}  // namespace spr::json_text
