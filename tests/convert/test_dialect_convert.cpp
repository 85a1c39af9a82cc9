// oft convert --to (io/dialect_convert.hpp): every written conversion is read back by oft's own
// reader and merged on a seeded random base, against the source's merge by its own reader; every
// refusal names the reason and the measured change and writes nothing; and the per-module
// summary of `oft inspect` names each dialect's side and traps.
//
// Tolerance of a merge comparison, per element, derived before comparing (u = 2^-24): a float32
// merge rounds a b-term product of the base against R, and R itself (a Neumann polynomial, or
// an LU solve of I - Q for Cayley, whose condition is at most kappa = sqrt(1 + ||Q||_F^2)) adds
// a few b u kappa ||R||_F; with the converted generators' own float32 rounding (one u, times
// kappa^2 through the Cayley map) both sides together stay below
//   16 (b + 8) u kappa^2 max(1, ||R||_F) ||w||_2
// with w the base's row block (input side) or column block (output side) the entry depends on.

// clang-format off
#include <oft/io/dialect_convert.hpp>

#include <gtest/gtest.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "io_test_support.hpp"

namespace {

namespace fs = std::filesystem;
using oft::Index;
using oft::io::Dialect;
using oft::io::DialectConvertOptions;
using oft::io::OneTrainerAdapter;
using oft::io::PeftOftAdapter;
using oft::onetrainer::Layer;
using MatrixF = oft::RowMatrix<float>;
using MatrixD = oft::RowMatrix<double>;
using oft_io_test::ScratchDir;

constexpr double kU = 0x1p-24;

fs::path dialects(const std::string& name) { return fs::path(OFT_DIALECTS_FIXTURES_DIR) / name; }
fs::path peft(const std::string& name) { return fs::path(OFT_PEFT_ADAPTERS_DIR) / name; }

MatrixF random_base(Index rows, Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  MatrixF w(rows, cols);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = dist(gen);
  return w;
}

DialectConvertOptions options(const fs::path& in, const fs::path& out, Dialect to) {
  DialectConvertOptions o;
  o.adapter = in.string();
  o.out = out.string();
  o.to = to;
  return o;
}

/// The refusal's message (and that nothing was written), or a failure when it wrote.
std::string refusal(const DialectConvertOptions& o, const ScratchDir& scratch) {
  try {
    (void)oft::io::convert_dialect(o);
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(scratch.entries().empty()) << "a refused conversion left files behind";
    return e.what();
  }
  ADD_FAILURE() << o.adapter << " -> " << o.out << " was written, expected a refusal";
  return {};
}

/// Worst share of the bound (header) between a PEFT merge of every Linear module and the
/// OneTrainer merge of the same module of `ot` (both as oft reads them), on random bases.
double peft_vs_onetrainer(const PeftOftAdapter& p, const OneTrainerAdapter& ot) {
  double worst = 0.0;
  unsigned seed = 7;
  for (const auto& m : p.modules) {
    const auto& o = ot.module(m.name);
    const Index b = m.spec.block_size;
    const Index cols = m.spec.shared ? 3 * b : m.spec.features();
    const MatrixF w = random_base(5, cols, seed++);
    const MatrixF got = p.merge(m, oft::view(w));
    const MatrixD wd = w.cast<double>();
    const MatrixD want = OneTrainerAdapter::merge(o, oft::view(wd), Layer::Linear);
    double r_norm = 1.0;
    for (const auto& r : o.rotations()) r_norm = std::max(r_norm, r.norm());
    double kappa = 1.0;
    const auto theta = p.effective_generators(m);
    for (Index g = 0; g < theta.count(); ++g)
      kappa = std::max(kappa, 1.0 + double(theta.dense(g).squaredNorm()));
    for (Index i = 0; i < w.rows(); ++i)
      for (Index j = 0; j < cols; ++j) {
        const double row_block = wd.row(i).segment((j / b) * b, b).norm();
        const double bound = 16.0 * double(b + 8) * kU * kappa * r_norm * row_block;
        worst = std::max(worst, std::abs(double(got(i, j)) - want(i, j)) / bound);
      }
  }
  return worst;
}

/// Worst share of the bound (header) between the output-side merges, by oft's reader, of a
/// LyCORIS/kohya module `s` and its conversion `o`, on a seeded random base.
double output_side_worst(const oft::io::LycorisDiagOftModule& s,
                         const oft::io::LycorisDiagOftModule& o, unsigned seed) {
  const Index b = s.block_size;
  const MatrixF w = random_base(s.out_features(), 7, seed);
  const MatrixF want = oft::io::LycorisAdapter::merge(s, oft::view(w));
  const MatrixF got = oft::io::LycorisAdapter::merge(o, oft::view(w));
  const std::vector<double> blocks(s.oft_blocks.begin(), s.oft_blocks.end());
  const oft::lycoris::DiagOft<double> op(s.blocks, b, blocks.data(), double(s.alpha), {}, 1.0,
                                         s.rule);
  double kappa = 1.0, r_norm = 1.0;
  for (Index g = 0; g < s.blocks; ++g) {
    kappa = std::max(kappa, 1.0 + double(op.generators().dense(g).squaredNorm()));
    r_norm = std::max(r_norm, double(op.block(g).norm()));
  }
  double worst = 0.0;
  for (Index r = 0; r < w.rows(); ++r)
    for (Index c = 0; c < w.cols(); ++c) {
      const double column_block = w.col(c).segment((r / b) * b, b).cast<double>().norm();
      const double bound = 16.0 * double(b + 8) * kU * kappa * r_norm * column_block;
      worst = std::max(worst, std::abs(double(got(r, c)) - double(want(r, c))) / bound);
    }
  return worst;
}

/// A LyCORIS fixture of make_fixtures.py (names `lycoris_<path>`) under U-Net names
/// (`lora_unet_<path>`), written to `path`.
oft::io::LycorisAdapter as_unet_modules(const std::string& fixture, const fs::path& path) {
  oft::io::LycorisAdapter a = oft::io::LycorisAdapter::load(dialects(fixture));
  for (auto& m : a.modules) m.name = "lora_unet_" + m.name.substr(std::string("lycoris_").size());
  a.save(path);
  return a;
}

// ---------------------------------------------------------------------------------------------
// PEFT OFT -> OneTrainer / ComfyUI-OFTv2.

TEST(PeftToOneTrainer, FiveTermAdaptersAreExactAndMergeTheSame) {
  for (const char* name : {"neumann_t5", "coft", "block_share"}) {
    SCOPED_TRACE(name);
    ScratchDir scratch;
    const auto report = oft::io::convert_dialect(
        options(peft(name), scratch / "ot.safetensors", Dialect::OneTrainer));
    EXPECT_LE(report.max_change, 1e-12);
    const PeftOftAdapter source = PeftOftAdapter::load(peft(name));
    const OneTrainerAdapter written = OneTrainerAdapter::load(scratch / "ot.safetensors");
    ASSERT_EQ(written.modules.size(), source.modules.size());
    const double share = peft_vs_onetrainer(source, written);
    EXPECT_LT(share, 1.0);
    std::printf("[ measured ] PEFT %s -> OneTrainer: merge worst %.3g of the bound\n", name, share);
  }
}

TEST(PeftToOneTrainer, OtherSeriesAreRefusedWithTheChange) {
  const struct {
    const char* name;
    const char* reason;
  } cases[] = {{"exact", "R(Q)^T"}, {"legacy_t5", "pre-0.18"}, {"neumann_t2", "2-term"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ScratchDir scratch;
    const std::string message =
        refusal(options(peft(c.name), scratch / "ot.safetensors", Dialect::OneTrainer), scratch);
    EXPECT_NE(message.find("not exact"), std::string::npos) << message;
    EXPECT_NE(message.find(c.reason), std::string::npos) << message;
    EXPECT_NE(message.find("--allow-change"), std::string::npos) << message;
  }
}

TEST(PeftToOneTrainer, AllowedChangeIsWhatTheLoaderComputes) {
  ScratchDir scratch;
  auto o = options(peft("exact"), scratch / "ot.safetensors", Dialect::OneTrainer);
  o.allow_change = true;
  const auto report = oft::io::convert_dialect(o);
  EXPECT_GT(report.max_change, 1e-3);  // the 5-term series is not Cayley at these generators
  // The written generators are PEFT's own (oft's convention): R_5 of them approximates PEFT's R.
  const PeftOftAdapter source = PeftOftAdapter::load(peft("exact"));
  const OneTrainerAdapter written = OneTrainerAdapter::load(scratch / "ot.safetensors");
  for (const auto& m : source.modules) {
    const auto rot = written.module(m.name).rotations();
    const auto theta = source.effective_generators(m);
    for (Index g = 0; g < theta.count(); ++g)
      for (Index k = 0; k < theta.packed(); ++k)
        EXPECT_EQ(written.module(m.name).theta[static_cast<std::size_t>(g * theta.packed() + k)],
                  double(theta.row(g)[k]));
    EXPECT_EQ(static_cast<Index>(rot.size()), theta.count());
  }
}

TEST(PeftToOneTrainer, EmbeddingIsRefused) {
  ScratchDir scratch;
  const std::string message =
      refusal(options(peft("embedding"), scratch / "ot.safetensors", Dialect::OneTrainer), scratch);
  EXPECT_NE(message.find("Embedding"), std::string::npos) << message;
}

// ---------------------------------------------------------------------------------------------
// OneTrainer -> PEFT OFT.

/// A OneTrainer file from PEFT's neumann_t5 (exact, tested above), then edited with `edit`.
template <class Edit>
fs::path onetrainer_file(const ScratchDir& scratch, const std::string& name, Edit edit) {
  const fs::path plain = scratch / (name + "_src.safetensors");
  if (!fs::exists(scratch / "base.safetensors"))
    (void)oft::io::convert_dialect(
        options(peft("neumann_t5"), scratch / "base.safetensors", Dialect::OneTrainer));
  OneTrainerAdapter a = OneTrainerAdapter::load(scratch / "base.safetensors");
  for (auto& m : a.modules) edit(m);
  a.save(plain);
  return plain;
}

/// Worst share of the bound between the OneTrainer source's merge (exact-norm clip) and the
/// written PEFT adapter's.
double onetrainer_vs_peft(const fs::path& ot_file, const fs::path& peft_dir) {
  return peft_vs_onetrainer(PeftOftAdapter::load(peft_dir), OneTrainerAdapter::load(ot_file));
}

TEST(OneTrainerToPeft, PlainScaledAndNonBindingClipAreExact) {
  ScratchDir scratch;
  const fs::path plain = onetrainer_file(scratch, "plain", [](oft::io::OneTrainerModule&) {});
  const fs::path scaled = onetrainer_file(scratch, "scaled", [](oft::io::OneTrainerModule& m) {
    m.flags.scaled = true;  // the same R: theta times 2 sqrt(b - 1)
    for (double& v : m.theta) v = double(float(v * 2.0 * std::sqrt(double(m.block_size - 1))));
  });
  const fs::path loose = onetrainer_file(scratch, "loose", [](oft::io::OneTrainerModule& m) {
    m.flags.clipped = true;
    m.flags.clip = 50.0;  // above every block's ||Q||_2
  });
  for (const fs::path& file : {plain, scaled, loose}) {
    SCOPED_TRACE(file.filename().string());
    const fs::path out = scratch / (file.stem().string() + "_peft");
    const auto report = oft::io::convert_dialect(options(file, out, Dialect::PeftOft));
    EXPECT_LE(report.max_change, 1e-6);
    const PeftOftAdapter back = PeftOftAdapter::load(out);
    EXPECT_TRUE(back.config.use_cayley_neumann);
    EXPECT_EQ(back.config.num_cayley_neumann_terms, 5);
    const double share = onetrainer_vs_peft(file, out);
    EXPECT_LT(share, 1.0);
    std::printf("[ measured ] OneTrainer %s -> PEFT: change %.3g, merge worst %.3g of the bound\n",
                file.stem().string().c_str(), report.max_change, share);
  }
}

TEST(OneTrainerToPeft, BindingClipAndUnconvergedCansAreRefusedWithTheChange) {
  ScratchDir scratch;
  const fs::path tight = onetrainer_file(scratch, "tight", [](oft::io::OneTrainerModule& m) {
    m.flags.clipped = true;
    m.flags.clip = 0.01;
  });
  // Generators up to ||Q||_2 ~ 40 (neumann_t5's times 50), where 7 Newton-Schulz steps are still
  // measurably off exact Cayley (as on tests/dialects' cans fixture, docs/dialects.md section 4).
  const fs::path cans = onetrainer_file(scratch, "cans", [](oft::io::OneTrainerModule& m) {
    m.flags.cans = true;
    for (double& v : m.theta) v *= 50.0;
  });
  const std::size_t before = scratch.entries().size();
  for (const auto& [file, reason] :
       {std::pair{tight, std::string("power iteration")}, std::pair{cans, std::string("CANS")}}) {
    SCOPED_TRACE(file.filename().string());
    try {
      (void)oft::io::convert_dialect(options(file, scratch / "out", Dialect::PeftOft));
      ADD_FAILURE() << file << " was converted";
    } catch (const std::invalid_argument& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(reason), std::string::npos) << message;
      EXPECT_NE(message.find("moves by"), std::string::npos) << message;
    }
    EXPECT_EQ(scratch.entries().size(), before) << "a refusal wrote";
  }
  // Allowed, every CANS module goes to PEFT's exact branch (CANS tends to exact Cayley).
  auto o = options(cans, scratch / "cans_peft", Dialect::PeftOft);
  o.allow_change = true;
  const auto report = oft::io::convert_dialect(o);
  EXPECT_FALSE(PeftOftAdapter::load(scratch / "cans_peft").config.use_cayley_neumann);
  EXPECT_GT(report.max_change, 1e-6);
  std::printf("[ measured ] OneTrainer cans (x50) -> PEFT exact branch: change %.3g\n",
              report.max_change);
}

TEST(OneTrainerToPeft, MixedSharingIsRefused) {
  // The fixture shares one block in to_k only; PEFT's block_share is adapter-wide.
  ScratchDir scratch;
  const std::string message = refusal(
      options(dialects("onetrainer_cans.safetensors"), scratch / "p", Dialect::PeftOft), scratch);
  EXPECT_NE(message.find("block_share is one setting"), std::string::npos) << message;
}

TEST(OneTrainerToPeft, ConvergedCansIsExactCayley) {
  // Moderate generators (PEFT's neumann_t5 ones times 8, ||Q||_2 up to ~7): CANS's 7 steps meet
  // exact Cayley to the tolerance, so PEFT's exact branch carries the module.
  ScratchDir scratch;
  const fs::path cans = onetrainer_file(scratch, "cans", [](oft::io::OneTrainerModule& m) {
    m.flags.cans = true;
    for (double& v : m.theta) v *= 8.0;
  });
  const auto report = oft::io::convert_dialect(options(cans, scratch / "peft", Dialect::PeftOft));
  EXPECT_LE(report.max_change, 1e-6);
  EXPECT_FALSE(PeftOftAdapter::load(scratch / "peft").config.use_cayley_neumann);
  const double share = onetrainer_vs_peft(cans, scratch / "peft");
  EXPECT_LT(share, 1.0);
  std::printf(
      "[ measured ] OneTrainer cans (x8) -> PEFT exact branch: change %.3g, merge worst "
      "%.3g of the bound\n",
      report.max_change, share);
}

TEST(OneTrainerToPeft, RoundTripOfAPeftAdapterGivesItsRotationBack) {
  ScratchDir scratch;
  (void)oft::io::convert_dialect(
      options(peft("neumann_t5"), scratch / "ot.safetensors", Dialect::OneTrainer));
  (void)oft::io::convert_dialect(
      options(scratch / "ot.safetensors", scratch / "peft", Dialect::PeftOft));
  const PeftOftAdapter a = PeftOftAdapter::load(peft("neumann_t5"));
  const PeftOftAdapter b = PeftOftAdapter::load(scratch / "peft");
  ASSERT_EQ(a.modules.size(), b.modules.size());
  for (std::size_t i = 0; i < a.modules.size(); ++i) {
    const MatrixF w = random_base(4, a.modules[i].spec.features(), 11);
    EXPECT_EQ(a.merge(a.modules[i], oft::view(w)),
              b.merge(b.module(a.modules[i].name), oft::view(w)));
  }
}

// ---------------------------------------------------------------------------------------------
// kohya -> LyCORIS.

TEST(KohyaToLycoris, ConstraintFoldedMergesTheSame) {
  for (const char* name : {"kohya_k4.safetensors", "kohya_alpha0.safetensors"}) {
    SCOPED_TRACE(name);
    ScratchDir scratch;
    const auto report = oft::io::convert_dialect(
        options(dialects(name), scratch / "lyc.safetensors", Dialect::Lycoris));
    EXPECT_LE(report.max_change, 1e-6);
    const auto source = oft::io::LycorisAdapter::load(dialects(name));
    const auto written = oft::io::LycorisAdapter::load(scratch / "lyc.safetensors");
    EXPECT_EQ(written.dialect, oft::io::LycorisAdapter::Dialect::Lycoris);
    ASSERT_EQ(written.modules.size(), source.modules.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < source.modules.size(); ++i) {
      const auto& s = source.modules[i];
      const auto& o = written.modules[i];
      EXPECT_EQ(o.name, "lora_unet_" + s.name.substr(9));
      EXPECT_EQ(o.alpha, 0.0f);
      worst = std::max(worst, output_side_worst(s, o, 3 + unsigned(i)));
    }
    EXPECT_LT(worst, 1.0);
    std::printf("[ measured ] kohya %s -> LyCORIS: change %.3g, merge worst %.3g of the bound\n",
                name, report.max_change, worst);
  }
}

TEST(KohyaToLycoris, FluxSplitsOfOtherBlockSizesAreRefused) {
  ScratchDir scratch;
  const std::string message = refusal(
      options(dialects("kohya_flux.safetensors"), scratch / "l.safetensors", Dialect::Lycoris),
      scratch);
  EXPECT_NE(message.find("one block size"), std::string::npos) << message;
}

// LyCORIS -> kohya.

TEST(LycorisToKohya, ConstraintFoldedMergesTheSame) {
  for (const char* name : {"lycoris_constrained_b8.safetensors", "lycoris_plain_b4.safetensors"}) {
    SCOPED_TRACE(name);
    ScratchDir scratch;
    const auto source = as_unet_modules(name, scratch / "src.safetensors");
    const auto report = oft::io::convert_dialect(
        options(scratch / "src.safetensors", scratch / "k.safetensors", Dialect::Kohya));
    EXPECT_LE(report.max_change, 1e-6);
    const auto written = oft::io::LycorisAdapter::load(scratch / "k.safetensors");
    EXPECT_EQ(written.dialect, oft::io::LycorisAdapter::Dialect::Kohya);
    ASSERT_EQ(written.modules.size(), source.modules.size());
    double worst = 0.0;
    int binding = 0;
    for (std::size_t i = 0; i < source.modules.size(); ++i) {
      const auto& s = source.modules[i];
      const auto& o = written.modules[i];
      EXPECT_EQ(o.name, "oft_unet_" + s.name.substr(10));
      EXPECT_EQ(o.rule, oft::lycoris::ConstraintRule::Kohya);
      EXPECT_FALSE(o.rescaled());
      binding += s.diag_oft().constraint().active ? 1 : 0;
      worst = std::max(worst, output_side_worst(s, o, 11 + unsigned(i)));
    }
    EXPECT_LT(worst, 1.0);
    if (std::string(name).find("constrained") != std::string::npos) {
      EXPECT_GT(binding, 0);
    }
    std::printf("[ measured ] LyCORIS %s -> kohya: change %.3g, merge worst %.3g of the bound, "
                "%d module(s) binding\n", name, report.max_change, worst, binding);
  }
}

TEST(LycorisToKohya, KohyaToLycorisAndBackMergesAsTheOriginal) {
  ScratchDir scratch;
  (void)oft::io::convert_dialect(
      options(dialects("kohya_k4.safetensors"), scratch / "l.safetensors", Dialect::Lycoris));
  (void)oft::io::convert_dialect(
      options(scratch / "l.safetensors", scratch / "k.safetensors", Dialect::Kohya));
  const auto original = oft::io::LycorisAdapter::load(dialects("kohya_k4.safetensors"));
  const auto back = oft::io::LycorisAdapter::load(scratch / "k.safetensors");
  ASSERT_EQ(back.modules.size(), original.modules.size());
  for (std::size_t i = 0; i < back.modules.size(); ++i) {
    EXPECT_EQ(back.modules[i].name, original.modules[i].name);
    EXPECT_LT(output_side_worst(original.modules[i], back.modules[i], 5 + unsigned(i)), 1.0);
  }
}

TEST(LycorisToKohya, RefusesWhatKohyaCannotHold) {
  // One scratch directory per test: the renamed source in src/, the refused outputs in out/.
  ScratchDir scratch;
  fs::create_directories(scratch / "src");
  fs::create_directories(scratch / "out");
  (void)as_unet_modules("lycoris_rescaled_b4.safetensors", scratch / "src" / "rescaled.safetensors");
  const struct {
    fs::path in;
    const char* reason;
  } cases[] = {
      {dialects("lycoris_plain_b4.safetensors"), "kohya's OFT names only U-Net modules"},
      {scratch / "src" / "rescaled.safetensors", "has a rescale (largest |r - 1| = "},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.in.string());
    try {
      (void)oft::io::convert_dialect(
          options(c.in, scratch / "out" / "k.safetensors", Dialect::Kohya));
      ADD_FAILURE() << "written, expected a refusal";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(c.reason), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::is_empty(scratch / "out")) << "a refused conversion left files behind";
  }
}

// ---------------------------------------------------------------------------------------------
// Side: an output-side rotation has no input-side file, and back.

TEST(Side, OutputAndInputRotationsAreNotConverted) {
  const struct {
    fs::path in;
    Dialect to;
    const char* side;
  } cases[] = {
      {dialects("lycoris_plain_b4.safetensors"), Dialect::OneTrainer,
       "OUTPUT channels (W' = R^T W)"},
      {dialects("lycoris_plain_b4.safetensors"), Dialect::PeftOft, "OUTPUT channels (W' = R^T W)"},
      {dialects("kohya_k4.safetensors"), Dialect::OneTrainer, "OUTPUT channels (W' = R^T W)"},
      {peft("neumann_t5"), Dialect::Lycoris, "INPUT (W' = W R^T)"},
      {peft("neumann_t5"), Dialect::Kohya, "INPUT (W' = W R^T)"},
      {dialects("onetrainer_plain.safetensors"), Dialect::Lycoris, "INPUT (W' = W R^T)"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.in.string());
    ScratchDir scratch;
    const std::string message = refusal(options(c.in, scratch / "x", c.to), scratch);
    EXPECT_NE(message.find(c.side), std::string::npos) << message;
    EXPECT_NE(message.find("only when R = I"), std::string::npos) << message;
  }
}

TEST(Side, NoInputRotationReproducesAnOutputRotation) {
  // Why the refusal holds: for W = e_j e_k^T, R_out^T W = W R_in^T forces column j of R_out^T
  // times row k to equal e_j times row k of R_in^T, i.e. R_out e_j = e_j for every j. Checked on
  // LyCORIS's first block: the best input-side R (least squares over a random square W) leaves a
  // residual of the order of ||R - I||.
  const auto adapter = oft::io::LycorisAdapter::load(dialects("lycoris_plain_b4.safetensors"));
  const auto& m = adapter.modules.front();
  const MatrixF w = random_base(m.out_features(), m.out_features(), 5);
  const MatrixF target = oft::io::LycorisAdapter::merge(m, oft::view(w));
  const MatrixD wd = w.cast<double>(), td = target.cast<double>();
  // W X = T for X = R_in^T: the exact solution of a square invertible W, which is no block
  // rotation (a dense, non-orthogonal X) unless R = I.
  const MatrixD x = wd.fullPivLu().solve(td);
  const MatrixD gram = x.transpose() * x - MatrixD::Identity(x.rows(), x.cols());
  EXPECT_GT(gram.cwiseAbs().maxCoeff(), 1e-2);
}

TEST(Refusals, BoftSameDialectAndExistingOutput) {
  ScratchDir scratch;
  EXPECT_NE(refusal(options(dialects("lycoris_boft_plain_b4.safetensors"), scratch / "x",
                            Dialect::OneTrainer),
                    scratch)
                .find("BOFT"),
            std::string::npos);
  EXPECT_NE(
      refusal(options(dialects("onetrainer_plain.safetensors"), scratch / "x", Dialect::OneTrainer),
              scratch)
          .find("already"),
      std::string::npos);
  oft::io::detail::write_text_atomically(scratch / "x", "keep");
  try {
    (void)oft::io::convert_dialect(options(peft("neumann_t5"), scratch / "x", Dialect::OneTrainer));
    ADD_FAILURE() << "an existing output was replaced without force";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--force"), std::string::npos);
  }
  EXPECT_EQ(oft_io_test::read_bytes(scratch / "x"), "keep");
}

// ---------------------------------------------------------------------------------------------
// The per-module summary of `oft inspect`.

std::string all_traps(const std::vector<oft::io::DialectModuleSummary>& rows) {
  std::string out;
  for (const auto& r : rows) out += r.traps + "\n";
  return out;
}

TEST(Summary, EveryDialectNamesItsSideAndTraps) {
  const auto lyc = oft::io::summarize(oft::io::inspect_lycoris(
      oft::io::LycorisAdapter::load(dialects("lycoris_constrained_b8.safetensors"))));
  ASSERT_FALSE(lyc.empty());
  for (const auto& r : lyc) {
    EXPECT_EQ(r.side, "output");
    EXPECT_GE(r.binding, 0.0);
  }
  EXPECT_NE(all_traps(lyc).find("blends, not a rotation"), std::string::npos);
  const auto kohya = oft::io::summarize(oft::io::inspect_lycoris(
      oft::io::LycorisAdapter::load(dialects("kohya_alpha0.safetensors"))));
  EXPECT_NE(all_traps(kohya).find("alpha = 0 makes R ~ I"), std::string::npos);
  const auto ot = oft::io::summarize(oft::io::inspect_onetrainer(
      OneTrainerAdapter::load(dialects("onetrainer_clipped.safetensors"))));
  for (const auto& r : ot) EXPECT_EQ(r.side, "input");
  EXPECT_NE(all_traps(ot).find("merges differently on every ComfyUI-OFTv2 load"),
            std::string::npos);
  const PeftOftAdapter exact = PeftOftAdapter::load(peft("exact"));
  const auto p = oft::io::summarize(oft::io::inspect_adapter(exact, 1e-6), &exact);
  for (const auto& r : p) EXPECT_EQ(r.side, "input");
  EXPECT_NE(all_traps(p).find("would load it as the inverse rotation"), std::string::npos);
  const PeftOftAdapter coft = PeftOftAdapter::load(peft("coft"));
  for (const auto& r : oft::io::summarize(oft::io::inspect_adapter(coft, 1e-6), &coft))
    EXPECT_GT(r.binding, 0.0);
  const auto emb = oft::io::summarize(oft::io::inspect_adapter(peft("embedding").string(), 1e-6));
  bool output = false;
  for (const auto& r : emb) output = output || r.side == "output";
  EXPECT_TRUE(output);
}

}  // namespace
