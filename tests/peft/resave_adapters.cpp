// Reads PEFT adapter directories with oft and writes them back with PeftOftAdapter::save, for
// check_peft_loads_oft.py (which loads the copies with the real PEFT). Run by hand, not by ctest:
//   resave_adapters IN_DIR OUT_DIR [IN_DIR OUT_DIR ...]
#include <oft/io/peft_adapter.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  if (argc < 3 || argc % 2 == 0) {
    std::fprintf(stderr, "usage: %s IN_DIR OUT_DIR [IN_DIR OUT_DIR ...]\n", argv[0]);
    return 2;
  }
  try {
    for (int i = 1; i + 1 < argc; i += 2) {
      const auto adapter = oft::io::PeftOftAdapter::load(argv[i]);
      adapter.save(argv[i + 1]);
      std::printf("%s -> %s (%zu modules)\n", argv[i], argv[i + 1], adapter.modules.size());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
