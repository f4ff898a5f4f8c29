// Consumer test program: prints the quick-start result through the installed library.
#include <iostream>

#include <spr/runner.hpp>

int main() {
  spr::RunResult r = spr::run_code("import math\nresult = math.sqrt(input_data['x'])", {{"x", 81}});
  std::cout << (r.ok ? r.result.dump() : r.error.value_or("?")) << "\n";
  return r.ok && r.result == 9.0 ? 0 : 1;
}
