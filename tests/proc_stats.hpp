// Process bookkeeping for tests and the soak: open descriptors and the process table from /proc.
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace spr_test {

inline int open_fds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

struct ProcInfo {
  int pid, ppid, pgid;
  char state;
};

inline std::vector<ProcInfo> processes() {
  std::vector<ProcInfo> out;
  DIR* d = opendir("/proc");
  while (dirent* e = readdir(d)) {
    const int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    ProcInfo p{pid, 0, 0, '?'};
    rest >> p.state >> p.ppid >> p.pgid;
    out.push_back(p);
  }
  closedir(d);
  return out;
}

inline int children_of(int parent) {
  int n = 0;
  for (const auto& p : processes()) n += p.ppid == parent;
  return n;
}

}  // namespace spr_test
