// Downstream smoke test: must compile against an installed (find_package) or
// add_subdirectory'd oft and exit 0.
#include <oft/oft.hpp>

#include <cstdio>

int main() {
  if (oft::packed_size(4) != 6) {
    std::fprintf(stderr, "consumer: oft::packed_size(4) != 6\n");
    return 1;
  }
  std::puts("consumer: ok");
  return 0;
}
