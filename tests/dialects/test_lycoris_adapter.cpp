// The LyCORIS diag-OFT reader and writer (include/oft/io/lycoris_adapter.hpp) and the module
// math's own invariants (include/oft/lycoris.hpp): round trips through LyCORIS's files, the
// name mapping, and every refusal, each one clear line naming the tensor and its values, with
// nothing written.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/lycoris.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include <Eigen/SVD>

#include <oft/finite_difference.hpp>
#include <oft/io/safetensors_writer.hpp>

#include "io_test_support.hpp"
#include "lycoris_fixtures.hpp"

namespace oft_dialects_test {
namespace {

using oft::io::LycorisAdapter;
using oft::io::LycorisDiagOftModule;
using oft_io_test::ScratchDir;

TEST(LycorisAdapter, ModuleNamesAreLycorisOwn) {
  EXPECT_EQ(LycorisAdapter::module_name("fc1"), "lycoris_fc1");
  EXPECT_EQ(LycorisAdapter::module_name("proj.out"), "lycoris_proj_out");
  EXPECT_EQ(LycorisAdapter::module_name("down_blocks.0.attentions.0.proj_in", "lora_unet"),
            "lora_unet_down_blocks_0_attentions_0_proj_in");
}

TEST(LycorisAdapter, ReadsTheSavedShapes) {
  const LycorisAdapter a = LycorisAdapter::load(fixture("lycoris_rescaled_b4.safetensors"));
  ASSERT_EQ(a.modules.size(), 3u);
  const LycorisDiagOftModule& fc2 = a.module("lycoris_fc2");
  EXPECT_EQ(fc2.blocks, 6);  // LyCORIS's factorization(24, 4) = (4, 6): 6 blocks of 4
  EXPECT_EQ(fc2.block_size, 4);
  EXPECT_EQ(fc2.rescale_shape, (std::vector<std::uint64_t>{24, 1}));
  EXPECT_FLOAT_EQ(fc2.alpha, 0.04f);
  EXPECT_THROW((void)a.module("fc2"), std::out_of_range);
  const LycorisAdapter plain = LycorisAdapter::load(fixture("lycoris_constrained_b8.safetensors"));
  EXPECT_FALSE(plain.module("lycoris_fc1").rescaled());
  EXPECT_EQ(plain.module("lycoris_fc2").block_size, 3);  // factorization(24, 8) = (3, 8)
}

// save() writes what LyCORIS's saver wrote: the same entries (names, dtypes, shapes, offsets)
// and the same data bytes. Only the header text differs: LyCORIS passes metadata {} and the
// safetensors package then writes an empty "__metadata__" object, which oft's writer leaves out.
TEST(LycorisAdapter, SaveReproducesLycorisFiles) {
  ScratchDir dir;
  std::vector<std::string> files = fixture_cases();
  files.push_back("lycoris_conv_b4");
  files.push_back("kohya_flux");
  for (const std::string& name : files) {
    SCOPED_TRACE(name);
    const fs::path original = fixture(name + ".safetensors");
    const LycorisAdapter a = LycorisAdapter::load(original);
    a.save(dir / "copy.safetensors");
    const auto theirs = oft::io::SafetensorsFile::open(original);
    const auto ours = oft::io::SafetensorsFile::open(dir / "copy.safetensors");
    ASSERT_EQ(theirs.tensors().size(), ours.tensors().size());
    for (std::size_t i = 0; i < ours.tensors().size(); ++i) {
      const oft::io::TensorInfo &x = theirs.tensors()[i], &y = ours.tensors()[i];
      EXPECT_EQ(x.name, y.name);
      EXPECT_EQ(x.dtype, y.dtype);
      EXPECT_EQ(x.shape, y.shape);
      EXPECT_EQ(x.begin, y.begin);
      EXPECT_EQ(x.end, y.end);
    }
    EXPECT_TRUE(oft_io_test::read_bytes(original).substr(theirs.header().data_start()) ==
                oft_io_test::read_bytes(dir / "copy.safetensors").substr(ours.header().data_start()));
    const LycorisAdapter b = LycorisAdapter::load(dir / "copy.safetensors");
    ASSERT_EQ(a.modules.size(), b.modules.size());
    for (std::size_t i = 0; i < a.modules.size(); ++i) {
      EXPECT_EQ(a.modules[i].name, b.modules[i].name);
      EXPECT_EQ(a.modules[i].oft_blocks, b.modules[i].oft_blocks);
      EXPECT_EQ(a.modules[i].rescale, b.modules[i].rescale);
      EXPECT_EQ(a.modules[i].alpha, b.modules[i].alpha);
    }
  }
}

TEST(LycorisAdapter, DetectsByAThreeDimensionalOftBlocks) {
  EXPECT_TRUE(LycorisAdapter::is_lycoris_diag_oft(
      oft::io::SafetensorsFile::open(fixture("lycoris_plain_b4.safetensors"))));
  EXPECT_FALSE(LycorisAdapter::is_lycoris_diag_oft(oft::io::SafetensorsFile::open(
      fs::path(OFT_DIALECTS_FIXTURES_DIR) / "lycoris_plain_b4_expected.safetensors")));
}

// inspect_lycoris (what `oft inspect FILE.safetensors` prints): the constraint decisions are
// LyCORIS's (the fixture's record), R is a rotation at s = 1, and the blend at s = 1/2 is off by
// exactly 0.25 * 4 rho^2 / (1 + rho^2) at the reported rho.
TEST(LycorisAdapter, InspectReportsTheConstraintAndTheBlend) {
  const LycorisCase c = LycorisCase::load("lycoris_rescaled_b4");
  const std::vector<oft::io::LycorisModuleReport> report = oft::io::inspect_lycoris(c.adapter);
  ASSERT_EQ(report.size(), 3u);
  for (const auto& r : report) {
    SCOPED_TRACE(r.name);
    std::string path = r.name.substr(std::string("lycoris_").size());
    if (path == "proj_out") path = "proj.out";
    EXPECT_EQ(r.constraint_active, c.meta.at("constraint_active").at(path).get<bool>());
    EXPECT_EQ(r.constraint_active, r.binding() > 1.0);
    EXPECT_LE(r.orthogonality, 1e-14);
    EXPECT_NEAR(r.blend_half, r.rho * r.rho / (1.0 + r.rho * r.rho), 1e-13);
    EXPECT_TRUE(r.rescaled);
    EXPECT_GE(r.rescale_min, 0.5);
    EXPECT_LE(r.rescale_max, 1.5);
  }
  const nlohmann::ordered_json j = oft::io::to_json(report);
  EXPECT_EQ(j.at("dialect"), "lycoris-diag-oft");
  EXPECT_EQ(j.at("side"), "output");
  EXPECT_EQ(j.at("modules").size(), 3u);
}

// kohya's alpha = 0 scales Q by 1e-8 / (n + 1e-8): inspect says so, and R is ~I.
TEST(LycorisAdapter, InspectShowsKohyasAlphaZero) {
  const LycorisAdapter a = LycorisAdapter::load(fixture("kohya_alpha0.safetensors"));
  ASSERT_EQ(a.dialect, LycorisAdapter::Dialect::Kohya);
  for (const auto& r : oft::io::inspect_lycoris(a)) {
    EXPECT_EQ(r.dialect, "kohya-oft");
    EXPECT_TRUE(r.constraint_active);
    EXPECT_LT(r.constraint_factor, 1e-7);
    EXPECT_LT(r.rho, 1e-7);
  }
  EXPECT_EQ(oft::io::to_json(oft::io::inspect_lycoris(a)).at("dialect"), "kohya-oft");
}

// --- dialects ----------------------------------------------------------------------------------

TEST(LycorisAdapter, DetectsKohyaByItsPrefixAndCanBeOverridden) {
  const fs::path kohya = fixture("kohya_alpha0.safetensors");
  const LycorisAdapter detected = LycorisAdapter::load(kohya);
  EXPECT_EQ(detected.dialect, LycorisAdapter::Dialect::Kohya);
  for (const auto& m : detected.modules) EXPECT_EQ(m.rule, oft::lycoris::ConstraintRule::Kohya);
  const LycorisAdapter forced = LycorisAdapter::load(kohya, LycorisAdapter::Dialect::Lycoris);
  EXPECT_EQ(forced.dialect, LycorisAdapter::Dialect::Lycoris);
  for (const auto& m : forced.modules) EXPECT_EQ(m.rule, oft::lycoris::ConstraintRule::Lycoris);
  EXPECT_EQ(LycorisAdapter::load(fixture("lycoris_plain_b4.safetensors"), LycorisAdapter::Dialect::Kohya).dialect,
            LycorisAdapter::Dialect::Kohya);
}

// --- refusals --------------------------------------------------------------------------------

/// A file of the given F32 tensors (name, shape, values).
struct Tensor {
  std::string name;
  std::vector<std::uint64_t> shape;
  std::vector<float> values;
};
fs::path write_file(const ScratchDir& dir, const std::vector<Tensor>& tensors) {
  oft::io::SafetensorsWriter writer;
  for (const Tensor& t : tensors) writer.add(t.name, t.shape, t.values);
  const fs::path path = dir / "adapter.safetensors";
  writer.write(path);
  return path;
}
std::vector<float> values(std::size_t n, float v = 0.25f) { return std::vector<float>(n, v); }

/// load() throws format_error (a std::invalid_argument) whose one-line message holds `parts`.
void expect_refused(const fs::path& path, const std::vector<std::string>& parts) {
  try {
    (void)LycorisAdapter::load(path);
    ADD_FAILURE() << "accepted " << path;
  } catch (const oft::io::format_error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    EXPECT_CONTAINS(what, path.string());
    for (const std::string& part : parts) EXPECT_CONTAINS(what, part);
  }
}

TEST(LycorisAdapterRefuses, AFileWithoutDiagOft) {
  ScratchDir dir;
  expect_refused(write_file(dir, {{"base_model.model.fc1.oft_R.weight", {4, 6}, values(24)}}),
                 {"no LyCORIS diag-OFT module", "'base_model.model.fc1.oft_R.weight'"});
  expect_refused(write_file(dir, {{"lycoris_fc1.lora_up.weight", {16, 4}, values(64)},
                                  {"lycoris_fc1.alpha", {}, values(1)}}),
                 {"no LyCORIS diag-OFT module", "'lycoris_fc1.lora_up.weight'"});
}

// LyCORIS BOFT: a 4-D oft_blocks [m, N, b, b] is read when it is a butterfly (b even, N a
// multiple of 2^(m-1)); otherwise refused naming the tensor and m, N, b; nothing is written by
// save() for a module that is not one.
TEST(LycorisAdapterRefuses, BoftBlocksThatAreNoButterfly) {
  ScratchDir dir;
  const Tensor alpha{"lycoris_fc1.alpha", {}, values(1)};
  const LycorisAdapter read = LycorisAdapter::load(
      write_file(dir, {{"lycoris_fc1.oft_blocks", {2, 4, 2, 2}, values(32)}, alpha}));
  ASSERT_EQ(read.modules.size(), 1u);
  EXPECT_EQ(read.modules[0].stages, 2);
  EXPECT_EQ(read.modules[0].out_features(), 8);
  // N = 6 does not factor into 3 stages (stage 2 pairs channels across 4 b: N % 4 != 0).
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {3, 6, 2, 2}, values(72)}, alpha}),
                 {"'lycoris_fc1.oft_blocks'", "[3, 6, 2, 2]", "N=6", "m=3", "does not factor"});
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {2, 2, 3, 3}, values(36)}, alpha}),
                 {"'lycoris_fc1.oft_blocks'", "[2, 2, 3, 3]", "even"});
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {2, 2, 4, 2}, values(32)}, alpha}),
                 {"'lycoris_fc1.oft_blocks'", "[2, 2, 4, 2]", "[m, N, b, b]"});
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {2, 4, 2, 2}, values(32)}, alpha,
                                  {"lycoris_fc1.rescale", {4, 1}, values(4)}}),
                 {"'lycoris_fc1.rescale'", "[4, 1]", "[8, 1, ...]", "[2, 4, 2, 2]"});
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {2, 4, 2, 2}, values(32)}}),
                 {"'lycoris_fc1.alpha'", "'lycoris_fc1.oft_blocks'"});
  // kohya has no BOFT: a 4-D block tensor read as kohya's is refused.
  const fs::path kohya = write_file(dir, {{"oft_unet_a.oft_blocks", {2, 4, 2, 2}, values(32)},
                                          {"oft_unet_a.alpha", {}, values(1)}});
  try {
    (void)LycorisAdapter::load(kohya, LycorisAdapter::Dialect::Kohya);
    ADD_FAILURE() << "a BOFT module read as kohya";
  } catch (const oft::io::format_error& e) {
    EXPECT_CONTAINS(std::string(e.what()), "'oft_unet_a.oft_blocks'");
    EXPECT_CONTAINS(std::string(e.what()), "no BOFT");
  }
  // A module edited into no butterfly is refused by save(), and nothing is written.
  LycorisAdapter edited = read;
  edited.modules[0].blocks = 3;
  edited.modules[0].oft_blocks = values(2 * 3 * 2 * 2);
  const fs::path out = dir / "edited.safetensors";
  try {
    edited.save(out);
    ADD_FAILURE() << "saved a BOFT module of N=3 blocks in 2 stages";
  } catch (const std::invalid_argument& e) {
    EXPECT_CONTAINS(std::string(e.what()), "N=3");
    EXPECT_CONTAINS(std::string(e.what()), "m=2");
  }
  EXPECT_FALSE(fs::exists(out));
  // merge() of a base weight of another model: both shapes named.
  const oft::RowMatrix<float> w = oft::RowMatrix<float>::Ones(6, 3);
  try {
    (void)LycorisAdapter::merge(read.modules[0], oft::view(w));
    ADD_FAILURE() << "merged a 6-row weight with an 8-channel BOFT";
  } catch (const std::invalid_argument& e) {
    EXPECT_CONTAINS(std::string(e.what()), "6x3");
    EXPECT_CONTAINS(std::string(e.what()), "[2, 4, 2, 2]");
    EXPECT_CONTAINS(std::string(e.what()), "out=8");
  }
}

TEST(LycorisAdapterRefuses, BlocksThatAreNotSquare) {
  ScratchDir dir;
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {4, 3, 2}, values(24)},
                                  {"lycoris_fc1.alpha", {}, values(1)}}),
                 {"'lycoris_fc1.oft_blocks'", "[4, 3, 2]", "[k, b, b]"});
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {0, 4, 4}, {}},
                                  {"lycoris_fc1.alpha", {}, values(1)}}),
                 {"'lycoris_fc1.oft_blocks'", "[0, 4, 4]"});
}

TEST(LycorisAdapterRefuses, ARescaleOfTheWrongShape) {
  ScratchDir dir;
  const Tensor blocks{"lycoris_fc1.oft_blocks", {4, 4, 4}, values(64)};
  const Tensor alpha{"lycoris_fc1.alpha", {}, values(1)};
  expect_refused(write_file(dir, {blocks, alpha, {"lycoris_fc1.rescale", {15, 1}, values(15)}}),
                 {"'lycoris_fc1.rescale'", "[15, 1]", "expected [16, 1, ...]", "[4, 4, 4]"});
  // 1-D would broadcast over the weight's columns in torch, not its rows.
  expect_refused(write_file(dir, {blocks, alpha, {"lycoris_fc1.rescale", {16}, values(16)}}),
                 {"'lycoris_fc1.rescale'", "[16]", "expected [16, 1, ...]"});
  expect_refused(write_file(dir, {blocks, alpha, {"lycoris_fc1.rescale", {16, 2}, values(32)}}),
                 {"'lycoris_fc1.rescale'", "[16, 2]"});
}

TEST(LycorisAdapterRefuses, AMissingOrMalformedAlpha) {
  ScratchDir dir;
  const Tensor blocks{"lycoris_fc1.oft_blocks", {4, 4, 4}, values(64)};
  expect_refused(write_file(dir, {blocks}), {"'lycoris_fc1.alpha'", "'lycoris_fc1.oft_blocks'"});
  expect_refused(write_file(dir, {blocks, {"lycoris_fc1.alpha", {2}, values(2)}}),
                 {"'lycoris_fc1.alpha'", "[2]", "one finite number"});
  expect_refused(write_file(dir, {blocks, {"lycoris_fc1.alpha", {}, {std::numeric_limits<float>::quiet_NaN()}}}),
                 {"'lycoris_fc1.alpha'", "nan", "one finite number"});
}

TEST(LycorisAdapterRefuses, ATensorOfNoModule) {
  ScratchDir dir;
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {4, 4, 4}, values(64)},
                                  {"lycoris_fc1.alpha", {}, values(1)},
                                  {"lycoris_fc2.lora_up.weight", {16, 4}, values(64)}}),
                 {"'lycoris_fc2.lora_up.weight'", "[16, 4]", "no LyCORIS diag-OFT module"});
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {4, 4, 4}, values(64)},
                                  {"lycoris_fc1.alpha", {}, values(1)},
                                  {"lycoris_fc2.rescale", {16, 1}, values(16)}}),
                 {"'lycoris_fc2.rescale'"});
}

TEST(LycorisAdapterRefuses, AFileMixingKohyaAndLycoris) {
  ScratchDir dir;
  expect_refused(write_file(dir, {{"lycoris_fc1.oft_blocks", {4, 4, 4}, values(64)},
                                  {"lycoris_fc1.alpha", {}, values(1)},
                                  {"oft_unet_mid_block_proj_in.oft_blocks", {4, 2, 2}, values(16)},
                                  {"oft_unet_mid_block_proj_in.alpha", {}, values(1)}}),
                 {"'oft_unet_mid_block_proj_in.oft_blocks'", "'lycoris_fc1.oft_blocks'", "mixes"});
}

TEST(LycorisAdapterRefuses, KohyaWithRescaleAndMalformedFluxSplits) {
  ScratchDir dir;
  expect_refused(write_file(dir, {{"oft_unet_a.oft_blocks", {4, 2, 2}, values(16)},
                                  {"oft_unet_a.alpha", {}, values(1)},
                                  {"oft_unet_a.rescale", {8, 1}, values(8)}}),
                 {"'oft_unet_a.rescale'", "kohya", "no rescale"});
  const std::string name = "oft_unet_single_blocks_0_linear1";
  expect_refused(write_file(dir, {{name + ".oft_blocks.0", {4, 2, 2}, values(16)},
                                  {name + ".oft_blocks.2", {4, 2, 2}, values(16)},
                                  {name + ".alpha", {}, values(1)}}),
                 {"'" + name + ".oft_blocks.2'", "no '" + name + ".oft_blocks.1'"});
  expect_refused(write_file(dir, {{name + ".oft_blocks.0", {4, 2, 2}, values(16)},
                                  {name + ".oft_blocks", {4, 2, 2}, values(16)},
                                  {name + ".alpha", {}, values(1)}}),
                 {"'" + name + ".oft_blocks'", "'" + name + ".oft_blocks.0'", "both"});
  expect_refused(write_file(dir, {{name + ".oft_blocks.0", {4, 2, 2}, values(16)}}),
                 {"'" + name + ".alpha'"});
  expect_refused(write_file(dir, {{name + ".oft_blocks.0", {4, 3, 2}, values(24)},
                                  {name + ".alpha", {}, values(1)}}),
                 {"'" + name + ".oft_blocks.0'", "[4, 3, 2]"});
  const fs::path split = write_file(dir, {{name + ".oft_blocks.0", {4, 2, 2}, values(16)},
                                          {name + ".alpha", {}, values(1)}});
  try {
    (void)LycorisAdapter::load(split, LycorisAdapter::Dialect::Lycoris);
    ADD_FAILURE() << "read a FLUX split as LyCORIS";
  } catch (const oft::io::format_error& e) {
    EXPECT_CONTAINS(std::string(e.what()), "FLUX");
  }
}

TEST(LycorisAdapter, ReadsKohyaFluxSplitsInRowOrder) {
  const LycorisAdapter a = LycorisAdapter::load(fixture("kohya_flux.safetensors"));
  EXPECT_EQ(a.dialect, LycorisAdapter::Dialect::Kohya);
  const LycorisDiagOftModule& m = a.module("oft_unet_single_blocks_0_linear1");
  ASSERT_EQ(m.splits.size(), 4u);
  EXPECT_EQ(m.out_features(), 40);
  EXPECT_EQ(m.splits[3].block_size, 1);  // 4 rows in k = 4 blocks
  EXPECT_EQ(m.splits[2].name, "oft_unet_single_blocks_0_linear1.oft_blocks.2");
  for (const auto& part : m.splits) {
    EXPECT_EQ(part.rule, oft::lycoris::ConstraintRule::Kohya);
    EXPECT_EQ(part.alpha, m.alpha);
  }
  const Matrix w = Matrix::Ones(39, 8);
  EXPECT_THROW((void)LycorisAdapter::merge(m, oft::view(w)), std::invalid_argument);
  EXPECT_EQ(oft::io::inspect_lycoris(a).size(), 7u);  // one row per split
}

TEST(LycorisAdapterRefuses, AnIntegerDtype) {
  ScratchDir dir;
  oft::io::SafetensorsWriter writer;
  const std::vector<std::int32_t> ints(64, 1);
  const std::vector<float> one{1.0f};
  writer.add("lycoris_fc1.oft_blocks", {4, 4, 4}, ints);
  writer.add("lycoris_fc1.alpha", std::vector<std::uint64_t>{}, one);
  writer.write(dir / "adapter.safetensors");
  expect_refused(dir / "adapter.safetensors", {"'lycoris_fc1.oft_blocks'", "I32", "float dtype"});
}

TEST(LycorisAdapterRefuses, ABaseWeightOfAnotherShape) {
  const LycorisAdapter a = LycorisAdapter::load(fixture("lycoris_plain_b4.safetensors"));
  const Matrix w = Matrix::Ones(15, 12);
  try {
    (void)LycorisAdapter::merge(a.module("lycoris_fc1"), oft::view(w));
    ADD_FAILURE() << "merged a 15x12 weight";
  } catch (const std::invalid_argument& e) {
    EXPECT_CONTAINS(std::string(e.what()), "'lycoris_fc1'");
    EXPECT_CONTAINS(std::string(e.what()), "15x12");
    EXPECT_CONTAINS(std::string(e.what()), "out=16");
  }
}

TEST(LycorisAdapterRefuses, SavingAMalformedModuleWritesNothing) {
  ScratchDir dir;
  LycorisAdapter a = LycorisAdapter::load(fixture("lycoris_rescaled_b4.safetensors"));
  a.modules[1].rescale.pop_back();
  try {
    a.save(dir / "out.safetensors");
    ADD_FAILURE() << "saved a rescale of the wrong length";
  } catch (const std::invalid_argument& e) {
    EXPECT_CONTAINS(std::string(e.what()), "'lycoris_fc2'");
    EXPECT_CONTAINS(std::string(e.what()), "23 values");
  }
  EXPECT_TRUE(dir.entries().empty());
}

// Mutated files (one byte of the header or the data changed, or the file cut short), as the
// fuzz targets of tests/fuzz do for the other readers: reading, building every module's math and
// inspecting either succeed or throw one of the documented exceptions (format_error or another
// std::invalid_argument, std::domain_error for non-finite values, std::system_error), never
// anything else; the sanitizer builds run this too. Deterministic: a fixed seed.
TEST(LycorisAdapterRefuses, MutatedFilesFailCleanly) {
  ScratchDir dir;
  std::uint64_t state = 30;
  const auto next = [&state] {  // splitmix64
    state += 0x9e3779b97f4a7c15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  int accepted = 0, refused = 0;
  for (const std::string& name : {std::string("lycoris_rescaled_b4"), std::string("kohya_flux")}) {
    const std::string original = oft_io_test::read_bytes(fixture(name + ".safetensors"));
    std::uint64_t header = 0;
    for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<unsigned char>(original[size_t(i)]);
    for (int trial = 0; trial < 200; ++trial) {
      std::string bytes = original;
      if (trial % 10 == 9) {
        bytes.resize(static_cast<std::size_t>(next() % bytes.size()));
      } else {
        // Mostly the JSON header (shapes, dtypes, names, offsets), sometimes the data.
        const std::uint64_t span = trial % 4 == 3 ? bytes.size() - 8 - header : header;
        const std::uint64_t at = 8 + (trial % 4 == 3 ? header : 0) + next() % span;
        bytes[static_cast<std::size_t>(at)] = static_cast<char>(next() & 0xff);
      }
      const fs::path path = dir / "mutated.safetensors";
      oft_io_test::write_bytes(path, bytes);
      try {
        const LycorisAdapter a = LycorisAdapter::load(path);
        for (const auto& m : a.modules)
          for (const auto& unit : m.splits.empty() ? std::vector<LycorisDiagOftModule>{m} : m.splits)
            (void)unit.diag_oft(0.5);
        (void)oft::io::inspect_lycoris(a);
        ++accepted;
      } catch (const std::invalid_argument&) {
        ++refused;
      } catch (const std::domain_error&) {
        ++refused;
      } catch (const std::system_error&) {
        ++refused;
      }
    }
  }
  std::printf("[ mutate ] 400 mutated files: %d read, %d refused cleanly\n", accepted, refused);
  EXPECT_EQ(accepted + refused, 400);
  EXPECT_GT(refused, 0);
  EXPECT_GT(accepted, 0);  // data bytes changed into other finite values still read
}

// --- the module math ------------------------------------------------------------------------

// b = 1 (LyCORIS's factorization of a prime width): Q = 0, R = I, and the merge only rescales.
TEST(LycorisDiagOft, BlocksOfOneOnlyRescale) {
  const std::vector<float> blocks{0.3f, -0.2f, 0.7f};
  const oft::lycoris::DiagOft<float> op(3, 1, blocks.data(), 1.0, {2.0f, 0.5f, 1.0f}, 0.6);
  const Matrix w = (Matrix(3, 2) << 1, 2, 3, 4, 5, 6).finished();
  const Matrix merged = op.merge(oft::view(w));
  const Matrix want = (Matrix(3, 2) << 2, 4, 1.5, 2, 5, 6).finished();
  EXPECT_EQ(merged, want);
}

// The multiplier blends linearly, so M = s R + (1 - s) I is orthogonal only at s = 0 and 1.
// With R's eigenvalues e^(i t), t = 2 atan(lambda) for Q's i lambda, M^T M - I = -s (1 - s)
// (2I - R - R^T) has norm |s (1 - s)| 4 lambda^2 / (1 + lambda^2) at the largest |lambda| = rho.
TEST(LycorisDiagOft, TheBlendIsNotOrthogonalByTheExpectedAmount) {
  const LycorisAdapter a = LycorisAdapter::load(fixture("lycoris_plain_b4.safetensors"));
  const LycorisDiagOftModule& m = a.module("lycoris_fc1");
  const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
  double rho = 0.0;
  const oft::lycoris::DiagOft<double> exact(m.blocks, m.block_size, blocks.data(), 0.0);
  for (oft::Index g = 0; g < m.blocks; ++g) {
    oft::SquareMatrix<double> q(m.block_size, m.block_size);
    oft::unpack_skew(exact.generators().row(g), m.block_size, q);
    rho = std::max(rho, q.jacobiSvd().singularValues()(0));
  }
  ASSERT_GT(rho, 0.1);  // random blocks: a blend far from a rotation
  for (const double s : {0.0, 1.0, 0.5, -0.75, 1.5}) {
    oft::lycoris::DiagOft<double> op(m.blocks, m.block_size, blocks.data(), 0.0, {}, s);
    const double want = std::abs(s * (1.0 - s)) * 4.0 * rho * rho / (1.0 + rho * rho);
    EXPECT_NEAR(op.orthogonality_error(), want, 1e-13) << "s=" << s;
  }
}

// apply_output is the output side of merge: X W'^T = (X W^T) M diag(rescale).
TEST(LycorisDiagOft, OutputSideEqualsMergedWeightInDouble) {
  const LycorisAdapter a = LycorisAdapter::load(fixture("lycoris_rescaled_b4.safetensors"));
  const LycorisDiagOftModule& m = a.module("lycoris_fc1");
  const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
  const oft::lycoris::DiagOft<double> op(m.blocks, m.block_size, blocks.data(), double(m.alpha),
                                         std::vector<double>(m.rescale.begin(), m.rescale.end()), -0.75);
  const MatrixD w = MatrixD::Random(16, 12), x = MatrixD::Random(5, 12);
  const MatrixD merged = op.merge(oft::view(w));
  const MatrixD want = x * merged.transpose();
  const MatrixD got = op.forward(oft::view(x), oft::view(w));
  EXPECT_LE((got - want).cwiseAbs().maxCoeff(), 1e-14);
}

// The gradients (backward_merge, hence backward_output) against central differences in double,
// in every regime of the constraint: LyCORIS's active and inactive, kohya's active, inactive and
// alpha = 0; multipliers 1, 0.5, -0.75; rescale on and off. Tolerance: 1e-6 of the gradient's
// largest entry (as tests/test_backward_gradcheck.cpp) plus the finite-difference rounding
// delta_L / h, delta_L = 2 gamma_m sum |C o W'| the rounding of one evaluation of L (m = out cols
// + 4 b: the sum over C o W' and the merged entries' own arithmetic), h = 1e-6. kohya's alpha = 0
// scales Q by 1e-8 / (n + 1e-8) (the identity, up to that factor): L then moves by ~1e-14 over a
// 1e-6 step, below its own rounding, so that regime steps by h = 1e-3, where the truncation
// error (h^2 times a third derivative that carries the same 1e-8 factor) is still negligible.
// alpha is fixed from ||Q||_F so that every active regime sits at n = 2c and every inactive one
// at n = c / 2, far from the kink.
TEST(LycorisDiagOft, GradientsMatchFiniteDifferences) {
  using oft::lycoris::ConstraintRule;
  constexpr double kStep = 1e-6, kRelative = 1e-6;
  const oft::Index k = 3, b = 4, out = k * b, cols = 5;
  struct Regime {
    const char* name;
    ConstraintRule rule;
    double radius_over_norm;  // c / ||Q||_F; 0: alpha = 0
    double s;
    bool rescaled;
  };
  const Regime regimes[] = {{"lycoris active", ConstraintRule::Lycoris, 0.5, 1.0, true},
                            {"lycoris active blend", ConstraintRule::Lycoris, 0.5, -0.75, false},
                            {"lycoris inactive", ConstraintRule::Lycoris, 2.0, 0.5, true},
                            {"lycoris off (alpha 0)", ConstraintRule::Lycoris, 0.0, 1.0, false},
                            {"kohya active", ConstraintRule::Kohya, 0.5, 0.5, false},
                            {"kohya inactive", ConstraintRule::Kohya, 2.0, 1.0, false},
                            {"kohya alpha 0", ConstraintRule::Kohya, 0.0, 1.0, false}};
  std::srand(30);
  const auto random = [] { return 2.0 * std::rand() / RAND_MAX - 1.0; };
  for (const Regime& regime : regimes) {
    SCOPED_TRACE(regime.name);
    std::vector<double> blocks(static_cast<std::size_t>(k * b * b)), rescale;
    for (double& v : blocks) v = 0.4 * random();
    if (regime.rescaled)
      for (oft::Index j = 0; j < out; ++j) rescale.push_back(1.0 + 0.5 * random());
    MatrixD w(out, cols), c(out, cols);
    for (oft::Index i = 0; i < out; ++i)
      for (oft::Index j = 0; j < cols; ++j) {
        w(i, j) = random();
        c(i, j) = random();
      }
    const double norm = [&] {
      const auto theta = oft::lycoris::skew_from_blocks(blocks.data(), k, b);
      return std::sqrt(2.0) * theta.values().norm();
    }();
    const double alpha = regime.radius_over_norm * norm / double(out);
    const auto loss = [&] {
      const oft::lycoris::DiagOft<double> op(k, b, blocks.data(), alpha, rescale, regime.s, regime.rule);
      return (c.array() * op.merge(oft::view(w)).array()).sum();
    };
    const oft::lycoris::DiagOft<double> op(k, b, blocks.data(), alpha, rescale, regime.s, regime.rule);
    EXPECT_EQ(op.constraint().active, regime.radius_over_norm < 1.0 &&
                                          (regime.radius_over_norm > 0.0 || regime.rule == ConstraintRule::Kohya));
    std::vector<double> d_blocks(blocks.size()), d_rescale(rescale.size());
    const MatrixD d_w = op.backward_merge(oft::view(w), oft::view(c), d_blocks.data(),
                                          regime.rescaled ? d_rescale.data() : nullptr);
    const double step =
        regime.rule == ConstraintRule::Kohya && regime.radius_over_norm == 0.0 ? 1e-3 : kStep;
    const double terms = (c.array() * op.merge(oft::view(w)).array()).abs().sum();
    const double m = double(out * cols + 4 * b), u = std::numeric_limits<double>::epsilon() / 2;
    const double loss_rounding = 2.0 * (m * u / (1.0 - m * u)) * terms;
    const auto check = [&](double* values, std::size_t count, const double* analytic, const char* what) {
      double scale = 0.0;
      for (std::size_t j = 0; j < count; ++j) scale = std::max(scale, std::abs(analytic[j]));
      ASSERT_GT(scale, 0.0) << what;
      const double tol = kRelative * scale + loss_rounding / step;
      const std::vector<double> fd = oft::numerical_gradient(values, oft::Index(count), loss, step);
      for (std::size_t j = 0; j < count; ++j) EXPECT_NEAR(analytic[j], fd[j], tol) << what << " " << j;
    };
    check(blocks.data(), blocks.size(), d_blocks.data(), "d oft_blocks");
    if (regime.rescaled) check(rescale.data(), rescale.size(), d_rescale.data(), "d rescale");
    check(w.data(), std::size_t(w.size()), d_w.data(), "d W");
  }
}

TEST(LycorisDiagOft, RefusesBadArguments) {
  const std::vector<float> blocks(16, 0.1f);
  EXPECT_THROW(oft::lycoris::DiagOft<float>(4, 2, blocks.data(), 1.0, {1.0f, 2.0f}), std::invalid_argument);
  EXPECT_THROW(oft::lycoris::DiagOft<float>(0, 2, blocks.data(), 1.0), std::invalid_argument);
  EXPECT_THROW(oft::lycoris::DiagOft<float>(4, 2, blocks.data(), std::nan("")), std::domain_error);
  oft::lycoris::DiagOft<float> op(4, 2, blocks.data(), 1.0);
  EXPECT_THROW(op.set_multiplier(std::numeric_limits<double>::infinity()), std::domain_error);
  const Matrix w = Matrix::Ones(7, 3);
  EXPECT_THROW((void)op.merge(oft::view(w)), std::invalid_argument);
}

}  // namespace
}  // namespace oft_dialects_test
