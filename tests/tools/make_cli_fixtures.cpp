// Writes the Hugging Face model directories that the command-line checks run `oft merge`,
// `oft unmerge` and `oft convert` on (tests/tools/cli_byte_check.sh, tests/tools/check_cli.cmake),
// built from the PEFT-made fixtures (tests/peft/fixtures/adapters/<config>/reference.safetensors
// holds each module's base weight):
//   base_<config>      float32, one file: `<m>.weight`, `<m>.bias`, position_ids, config files
//   base_bf16          neumann_t5's weights as bf16
//   base_sharded       neumann_t5 over three shards and an index
//   base_prefixed      neumann_t5 saved with a `bert.` prefix
//   base_quantized     neumann_t5 stored by bitsandbytes' keys: fc1 NF4 with double quantization,
//                      fc2 LLM.int8, odd FP4; base_quantized_4bit the same with a
//                      quantization_config that says 4-bit for all
//   base_tiny_boft,    the two-layer float32 model PEFT's BOFT and HRA adapters of
//   base_tiny_hra      tests/families/fixtures/adapters were made on (lin1, lin2), from
//                      families_reference.safetensors beside them
// Usage: make_cli_fixtures PEFT_FIXTURES_DIR OUT_DIR
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <oft/io/peft_adapter.hpp>
#include <string>
#include <vector>

#include "../io/toy_model.hpp"

namespace {

namespace fs = std::filesystem;
using oft::io::Dtype;

fs::path fixtures;

void make_base(const fs::path& dir, const std::string& name, int shards, Dtype dtype,
               const std::string& prefix) {
  oft_test::write_toy_model(dir, fixtures / "adapters" / name, shards, dtype, prefix);
}

// The TinyModel of tests/families/make_reference.py: `<m>.weight` and `<m>.bias` as PEFT saw them.
void make_family_base(const fs::path& dir, const std::string& family) {
  const auto reference = oft::io::SafetensorsFile::open(fixtures / ".." / ".." / "families" / "fixtures" /
                                                        "families_reference.safetensors");
  oft::io::SafetensorsWriter writer;
  for (const char* name : {"lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias"})
    writer.add(name, reference.tensor("adapter_" + family + "." + name));
  writer.add_metadata("format", "pt");
  fs::create_directories(dir);
  writer.write(dir / "model.safetensors");
  std::ofstream(dir / "config.json") << "{\"model_type\": \"tiny\"}\n";
}

void make_quantized_base(const fs::path& dir, const std::string& config_text) {
  oft_test::write_quantized_toy_model(dir, fixtures / "adapters" / "neumann_t5", config_text + "\n",
                                      /*with_bias=*/false);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_cli_fixtures PEFT_FIXTURES_DIR OUT_DIR\n");
    return 2;
  }
  fixtures = argv[1];
  const fs::path out = argv[2];
  fs::remove_all(out);
  for (const char* name :
       {"block_share", "coft", "embedding", "exact", "legacy_t5", "neumann_t2", "neumann_t5"})
    make_base(out / (std::string("base_") + name), name, 1, Dtype::F32, "");
  make_base(out / "base_bf16", "neumann_t5", 1, Dtype::BF16, "");
  make_base(out / "base_sharded", "neumann_t5", 3, Dtype::F32, "");
  make_base(out / "base_prefixed", "neumann_t5", 1, Dtype::F32, "bert.");
  make_quantized_base(out / "base_quantized", R"({"model_type": "toy"})");
  make_quantized_base(
      out / "base_quantized_4bit",  // fc2 is LLM.int8: refused
      R"({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}})");
  make_family_base(out / "base_tiny_boft", "boft");
  make_family_base(out / "base_tiny_hra", "hra");
  return 0;
}
