// The README's quick start: the square root of input_data['x'] in a sandboxed run.
#include <iostream>

#include <spr/runner.hpp>

int main() {
  spr::RunnerPolicy policy;
  policy.timeout_seconds = 5;
  policy.memory_limit_mb = 128;

  spr::RunResult r = spr::run_code("import math\nresult = math.sqrt(input_data['x'])", {{"x", 81}}, policy);
  if (r.ok) {
    std::cout << "Result: " << r.result.dump() << "\n";  // Result: 9.0
    return 0;
  }
  std::cout << "Error: " << r.error.value_or("?") << " (" << spr::to_string(r.error_kind) << ")\n";
  return 1;
}
