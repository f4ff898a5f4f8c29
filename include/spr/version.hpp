// Public API: the library's version string.
#pragma once

namespace spr {

const char* version();

}  // namespace spr
