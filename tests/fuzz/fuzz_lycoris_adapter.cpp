// libFuzzer target: the dialect files that are one .safetensors file each (LyCORIS diag-OFT and
// BOFT, kohya sd-scripts OFT with FLUX splits, OneTrainer / ComfyUI-OFTv2), on an arbitrary
// .safetensors file. The file's dialect is detected from its keys (detect_dialect: one dialect, or
// a format_error naming the keys), then it is read every way: LycorisAdapter with the dialect
// detected and forced to LyCORIS and to kohya (the two constraint rules and the paths only a
// forced dialect reaches), and OneTrainerAdapter. An accepted adapter is looked up by name,
// merged into a small base weight per module (LyCORIS at s = 1 and s = 1/2; OneTrainer as a
// Linear and as a Conv2d layer, at strengths 1 and 1/2), inspected (what `oft inspect` prints, and
// its JSON), and saved and read back, which must give the same modules bit for bit.
//
// Refusals must be the documented exceptions, never a crash, leak or stray read: reading and
// detection throw format_error (a std::invalid_argument); merge std::invalid_argument, or
// std::domain_error for values the math cannot take (lycoris::DiagOft, lycoris::Boft: non-finite
// blocks, or finite ones whose B - B^T overflows; OneTrainer: a singular I - Q); module()
// std::out_of_range. Anything else escapes and fails the run.
#include <oft/io/dialect.hpp>
#include <oft/io/lycoris_adapter.hpp>
#include <oft/io/onetrainer_adapter.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using oft::io::LycorisAdapter;
using oft::io::LycorisDiagOftModule;

// A violated invariant (not a refusal): abort, so libFuzzer keeps the input.
void expect(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_lycoris_adapter: %s\n", what);
  std::abort();
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

bool same_module(const LycorisDiagOftModule& a, const LycorisDiagOftModule& b) {
  if (a.name != b.name || a.blocks != b.blocks || a.block_size != b.block_size ||
      a.rule != b.rule || std::memcmp(&a.alpha, &b.alpha, sizeof(float)) != 0 ||
      !same_bits(a.oft_blocks, b.oft_blocks) || !same_bits(a.rescale, b.rescale) ||
      a.rescale_shape != b.rescale_shape || a.splits.size() != b.splits.size() ||
      a.stages != b.stages)
    return false;
  for (std::size_t i = 0; i < a.splits.size(); ++i)
    if (!same_module(a.splits[i], b.splits[i])) return false;
  return true;
}

void merge_each(const LycorisAdapter& adapter) {
  for (const LycorisDiagOftModule& m : adapter.modules) {
    expect(adapter.module(m.name).name == m.name, "module() by name");
    const oft::Index out = m.out_features();
    if (out > 4096) continue;  // keep one input fast; the math is tested elsewhere
    const oft::RowMatrix<float> weight = oft::RowMatrix<float>::Constant(out, 2, 0.5f);
    for (const double s : {1.0, 0.5}) {
      try {
        const oft::RowMatrix<float> merged = LycorisAdapter::merge(m, oft::view(weight), s);
        expect(merged.rows() == out && merged.cols() == 2, "merge() shape");
      } catch (const std::domain_error&) {  // the data is not finite, or B - B^T overflows
      }
    }
    // A base of other rows is refused, naming both shapes.
    const oft::RowMatrix<float> wrong = oft::RowMatrix<float>::Zero(out + 1, 2);
    try {
      (void)LycorisAdapter::merge(m, oft::view(wrong));
      expect(false, "merge() accepted a base of out + 1 rows");
    } catch (const std::invalid_argument&) {
    }
  }
}

void inspect(const LycorisAdapter& adapter) {
  try {
    const auto report = oft::io::inspect_lycoris(adapter);
    (void)oft::io::to_json(report).dump();
  } catch (const std::domain_error&) {
  }
}

// save() then load() with the same dialect: the modules come back bit for bit (the writer is
// F32, which holds every value the reader made exactly). An accepted adapter must save, and what
// it saved must read: any exception here is a finding.
void round_trip(const LycorisAdapter& adapter, LycorisAdapter::Dialect dialect) {
  const oft_fuzz::fs::path path = oft_fuzz::scratch_root() / "saved.safetensors";
  try {
    adapter.save(path);
    const LycorisAdapter back = LycorisAdapter::load(path, dialect);
    oft_fuzz::fs::remove(path);
    expect(back.dialect == adapter.dialect, "round trip: dialect");
    expect(back.metadata == adapter.metadata, "round trip: metadata");
    expect(back.modules.size() == adapter.modules.size(), "round trip: module count");
    for (const LycorisDiagOftModule& m : adapter.modules)
      expect(same_module(back.module(m.name), m), "round trip: a module changed");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_lycoris_adapter: round trip threw: %s\n", e.what());
    std::abort();
  }
}

void exercise(const oft::io::SafetensorsFile& file, LycorisAdapter::Dialect dialect) {
  try {
    const LycorisAdapter adapter = LycorisAdapter::read(file, dialect);
    expect(!adapter.modules.empty(), "an accepted file without modules");
    try {
      (void)adapter.module("no such module");
      expect(false, "module() found a module that is not there");
    } catch (const std::out_of_range&) {
    }
    merge_each(adapter);
    inspect(adapter);
    round_trip(adapter, dialect);
  } catch (const oft::io::format_error&) {
  } catch (const std::invalid_argument&) {
  }
}

using oft::io::OneTrainerAdapter;
using oft::io::OneTrainerModule;

bool same_module(const OneTrainerModule& a, const OneTrainerModule& b) {
  // save() writes F32: a module read from F32 comes back bit for bit, one read from F16/BF16
  // holds values F32 represents exactly, so it does too.
  return a.name == b.name && a.rows == b.rows && a.block_size == b.block_size &&
         a.theta.size() == b.theta.size() &&
         (a.theta.empty() ||
          std::memcmp(a.theta.data(), b.theta.data(), a.theta.size() * sizeof(double)) == 0) &&
         a.flags.scaled == b.flags.scaled && a.flags.clipped == b.flags.clipped &&
         a.flags.cans == b.flags.cans &&
         (!a.flags.clipped ||
          static_cast<float>(a.flags.clip) == static_cast<float>(b.flags.clip));
}

void exercise_onetrainer(const oft::io::SafetensorsFile& file) {
  OneTrainerAdapter adapter;
  try {
    adapter = OneTrainerAdapter::read(file);
  } catch (const oft::io::format_error&) {
    return;
  }
  expect(!adapter.modules.empty(), "an accepted OneTrainer file without modules");
  for (const OneTrainerModule& m : adapter.modules) {
    expect(adapter.module(m.name).name == m.name, "module() by name");
    const oft::Index in = m.rows * m.block_size;
    if (in > 4096) continue;  // keep one input fast; the math is tested elsewhere
    const oft::RowMatrix<double> weight = oft::RowMatrix<double>::Constant(2, in, 0.5);
    for (const auto layer : {oft::onetrainer::Layer::Linear, oft::onetrainer::Layer::Conv2d})
      for (const double s : {1.0, 0.5}) {
        try {
          const oft::RowMatrix<double> merged = OneTrainerAdapter::merge(m, oft::view(weight), layer, s);
          expect(merged.rows() == 2 && merged.cols() == in, "OneTrainer merge() shape");
        } catch (const std::domain_error&) {  // the math cannot take these values
        }
      }
    const oft::RowMatrix<double> wrong = oft::RowMatrix<double>::Zero(2, in + 1);
    try {
      (void)OneTrainerAdapter::merge(m, oft::view(wrong), oft::onetrainer::Layer::Linear);
      expect(false, "OneTrainer merge() accepted a base of in + 1 columns");
    } catch (const std::invalid_argument&) {
    }
  }
  try {
    (void)oft::io::to_json(oft::io::inspect_onetrainer(adapter, nullptr)).dump();
  } catch (const std::domain_error&) {
  }
  const oft_fuzz::fs::path path = oft_fuzz::scratch_root() / "saved_onetrainer.safetensors";
  try {
    adapter.save(path);
    const OneTrainerAdapter back = OneTrainerAdapter::load(path);
    oft_fuzz::fs::remove(path);
    expect(back.metadata == adapter.metadata, "OneTrainer round trip: metadata");
    expect(back.modules.size() == adapter.modules.size(), "OneTrainer round trip: module count");
    for (std::size_t i = 0; i < adapter.modules.size(); ++i)
      expect(same_module(back.modules[i], adapter.modules[i]), "OneTrainer round trip: a module changed");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_lycoris_adapter: OneTrainer round trip threw: %s\n", e.what());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const oft_fuzz::ScratchFile input(data, size);
  try {
    const auto file = oft::io::SafetensorsFile::open(input.path());
    try {
      (void)oft::io::detect_dialect(file);
    } catch (const oft::io::format_error&) {  // no dialect, or two: named by the message
    }
    exercise_onetrainer(file);
    exercise(file, LycorisAdapter::Dialect::Detect);
    exercise(file, LycorisAdapter::Dialect::Lycoris);
    exercise(file, LycorisAdapter::Dialect::Kohya);
  } catch (const oft::io::format_error&) {  // not a safetensors file: fuzz_safetensors' ground
  }
  return 0;
}
