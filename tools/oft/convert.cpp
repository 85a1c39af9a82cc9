// `oft convert`: a PEFT OFT adapter rewritten in another form PEFT loads, or (--to) an adapter
// of one dialect written in another where that is exact; any change of R is measured and refused
// unless allowed.

#include <cstdio>
#include <exception>
#include <stdexcept>
#include <oft/io/adapter_convert.hpp>
#include <oft/io/dialect_convert.hpp>
#include <string>

#include "cli.hpp"

namespace oft_tool {
namespace {

/// --generators-dtype's words (CLI11 has checked them; "" when not given).
oft::io::GeneratorsDtype generators_dtype(const std::string& name) {
  if (name == "f32") return oft::io::GeneratorsDtype::F32;
  if (name == "bf16") return oft::io::GeneratorsDtype::BF16;
  if (name == "f16") return oft::io::GeneratorsDtype::F16;
  return oft::io::GeneratorsDtype::Unchanged;
}

}  // namespace

void add_convert(CLI::App& app, ConvertCommand& command) {
  command.app = app.add_subcommand(
      "convert",
      "Rewrite a PEFT OFT adapter in another form PEFT loads (not BOFT or HRA), or with --to an "
      "adapter of one dialect in another where that is exact (refused with the change otherwise)");
  CLI::App& c = *command.app;
  c.add_option("--adapter", command.adapter,
               "PEFT OFT adapter directory (with --to: also a LyCORIS, kohya or OneTrainer file)")
      ->required();
  c.add_option("--out,-o", command.out,
               "output adapter directory (--to lycoris|kohya|onetrainer: a .safetensors file)")
      ->required();
  c.add_option("--to", command.to,
               "write the adapter in this dialect: peft (OFT), lycoris, kohya or onetrainer")
      ->check(CLI::IsMember({"peft", "lycoris", "kohya", "onetrainer"}));
  c.add_option("--tolerance", command.tolerance,
               "with --to: the largest change of an entry of R that counts as exact")
      ->check(CLI::PositiveNumber);
  add_dialect_option(c, command.dialect,
                     "with --to: read the adapter as this dialect instead of detecting it");
  c.add_flag("--expand-block-share", command.expand_block_share,
             "one generator per block instead of one shared (exact; needs --base)");
  c.add_option("--base", command.base, "model directory, for --expand-block-share");
  c.add_option("--generators-dtype", command.generators_dtype, "f32, bf16 or f16")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  c.add_flag("--to-current-polynomial", command.to_current_polynomial,
             "relabel a pre-0.18 adapter for PEFT >= 0.18 (changes R: needs --allow-change)");
  c.add_flag("--allow-change", command.allow_change, "write a conversion that changes R");
  c.add_flag("--force", command.force, "replace an existing output directory");
}

namespace {

int run_dialect_convert(const ConvertCommand& command) {
  oft::io::DialectConvertOptions options;
  options.adapter = command.adapter.string();
  options.out = command.out.string();
  options.allow_change = command.allow_change;
  options.force = command.force;
  options.tolerance = command.tolerance;
  try {
    if (!command.dialect.empty()) options.from = oft::io::parse_dialect(command.dialect);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft convert: %s\n", without_prefix(e).c_str());
    return 2;
  }
  options.to = command.to == "peft" ? oft::io::Dialect::PeftOft
                                    : oft::io::parse_dialect(command.to);
  try {
    if (command.expand_block_share || command.to_current_polynomial ||
        !command.generators_dtype.empty() || !command.base.empty())
      throw std::invalid_argument(
          "--to converts between dialects; --expand-block-share, --generators-dtype, "
          "--to-current-polynomial and --base rewrite a PEFT adapter as PEFT (run them apart)");
    const auto report = oft::io::convert_dialect(options);
    for (const auto& m : report.modules) {
      std::printf("  %-40s max |R_new - R_old| = %.3g", m.name.c_str(), m.change);
      if (m.written != m.name) std::printf("  -> %s", m.written.c_str());
      if (!m.note.empty()) std::printf("  (%s)", m.note.c_str());
      std::printf("\n");
    }
    std::printf("oft convert: %s -> %s: wrote %s (largest change of an entry of R: %.3g; read "
                "back: %.3g)\n",
                oft::io::dialect_name(report.from), oft::io::dialect_name(report.to),
                options.out.c_str(), report.max_change, report.round_trip);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft convert: %s\n", without_prefix(e).c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int run_convert(const ConvertCommand& command) {
  if (!command.to.empty()) return run_dialect_convert(command);
  if (!command.dialect.empty()) {
    std::fprintf(stderr, "oft convert: --dialect only applies with --to\n");
    return 2;
  }
  oft::io::ConvertOptions options;
  options.adapter = command.adapter.string();
  options.out = command.out.string();
  options.base = command.base.string();
  options.expand_block_share = command.expand_block_share;
  options.generators_dtype = generators_dtype(command.generators_dtype);
  options.to_current_polynomial = command.to_current_polynomial;
  options.allow_change = command.allow_change;
  options.force = command.force;
  try {
    const auto report = oft::io::convert_adapter(options);
    for (const auto& m : report.modules)
      std::printf("  %-40s max |R_new - R_old| = %.3g\n", m.name.c_str(), m.max_change);
    std::printf("oft convert: wrote %s (largest change of an entry of R: %.3g)\n",
                options.out.c_str(), report.max_change);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft convert: %s\n", without_prefix(e).c_str());
    return 1;
  }
  return 0;
}

}  // namespace oft_tool
