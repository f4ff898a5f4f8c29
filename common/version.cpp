// spr::version(), one definition for the supervisor library and the worker.
#include "spr/version.hpp"

namespace spr {
const char* version() { return SPR_VERSION; }
}  // namespace spr
