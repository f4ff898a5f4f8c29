// The host id a root supervisor's sandbox runs as: shared by the worker's identity layer and the start plan.
#pragma once

namespace spr::detail {
constexpr unsigned kSandboxId = 65534;  // nobody/nogroup: the run's uid and gid outside when root starts it
}  // namespace spr::detail
