// spr::version() for the worker, which does not link the supervisor library.
#include "spr/runner.hpp"

namespace spr {
const char* version() { return SPR_VERSION; }
}  // namespace spr
