// Which interpreter's engine state is current: the main interpreter's unless a sub-interpreter runs.
#include "interp_state.hpp"

namespace spr::embed {

namespace {
InterpState g_main_state;
thread_local InterpState* g_state = &g_main_state;  // each run thread has its own interpreter current
}  // namespace

InterpState& state() { return *g_state; }
void use_state(InterpState* s) { g_state = s ? s : &g_main_state; }

}  // namespace spr::embed
