// The host id a root supervisor's sandbox runs as: shared by the worker's identity layer and the start plan.
#pragma once

#include <unistd.h>

#include <cstdio>

namespace spr::detail {
constexpr unsigned kSandboxId = 65534;  // nobody/nogroup: the run's uid and gid outside when root starts it

// True when an id map of this process (/proc/self/uid_map or gid_map: "inside outside count" lines) holds `id`
// inside. A map that cannot be read counts as not holding it: the unprivileged path works in more places.
inline bool id_mapped(const char* map_path, unsigned id) {
  std::FILE* f = std::fopen(map_path, "re");
  if (f == nullptr) return false;
  unsigned long inside = 0, outside = 0, count = 0;
  bool found = false;
  while (!found && std::fscanf(f, "%lu %lu %lu", &inside, &outside, &count) == 3)
    found = id >= inside && id - inside < count;
  std::fclose(f);
  return found;
}

// True when this process is root and may become kSandboxId: its user namespace maps that uid and gid (always
// so in the initial namespace). Root of a rootless container's namespace usually maps one id only: it then
// sandboxes as an unprivileged supervisor does, its own uid outside.
inline bool root_with_sandbox_id() {
  return ::geteuid() == 0 && id_mapped("/proc/self/uid_map", kSandboxId) && id_mapped("/proc/self/gid_map", kSandboxId);
}
}  // namespace spr::detail
