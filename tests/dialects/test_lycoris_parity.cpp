// oft's LyCORIS diag-OFT (include/oft/lycoris.hpp, read by include/oft/io/lycoris_adapter.hpp)
// against lycoris-lora's own numbers: the adapters LyCORIS saved and the merged weights and
// forward outputs it computed (fixtures/, made by make_fixtures.py with lycoris-lora 4.1.3), to
// the float rounding bound derived in lycoris_fixtures.hpp; the same for kohya sd-scripts' OFT
// files against make_fixtures.py's reference of kohya's formulas (networks/oft.py @ 2d8ee3c); and
// the conventions a loader can get wrong (a transposed R, PEFT's 1/2 in the skew part, a missing
// rescale, a missing constraint, LyCORIS's constraint rule on a kohya file, the bias rotated or
// not) each shown to break that bound.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/lycoris.hpp>

#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "io_test_support.hpp"
#include "lycoris_fixtures.hpp"

namespace oft_dialects_test {
namespace {

using oft::io::LycorisDiagOftModule;

class LycorisParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LycorisParity, FixturesComeFromThePinnedReference) {
  const LycorisCase c = LycorisCase::load(GetParam());
  if (c.kohya()) {
    EXPECT_CONTAINS(c.meta.at("reference").get<std::string>(), "2d8ee3c28007393386528cfeec0a9b714dafd85b");
    EXPECT_EQ(c.adapter.dialect, oft::io::LycorisAdapter::Dialect::Kohya);
  } else {
    EXPECT_EQ(c.meta.at("lycoris_version").get<std::string>(), "4.1.3");
    EXPECT_EQ(c.adapter.dialect, oft::io::LycorisAdapter::Dialect::Lycoris);
  }
  EXPECT_EQ(c.adapter.modules.size(), c.modules().size());
}

// merge() and both forwards, float and double, every module and multiplier, within the bound.
TEST_P(LycorisParity, MergeAndForwardMatchLycoris) {
  const LycorisCase c = LycorisCase::load(GetParam());
  const std::vector<double> multipliers = c.multipliers();
  Difference merge_worst, forward_worst, double_worst;
  int forwards = 0;
  for (const std::string& path : c.modules()) {
    SCOPED_TRACE(path);
    const LycorisDiagOftModule& m = c.module(path);
    const Matrix w = c.matrix(path + ".weight");
    const Matrix x = c.matrix(path + ".x");
    const std::vector<float> bias = c.has(path + ".bias") ? c.vector(path + ".bias") : std::vector<float>{};
    const MatrixD wd = w.cast<double>();
    for (std::size_t i = 0; i < multipliers.size(); ++i) {
      const double s = multipliers[i];
      SCOPED_TRACE("multiplier " + std::to_string(s));
      const oft::lycoris::DiagOft<float> op = m.diag_oft(s);
      const MatrixD tol = merge_tolerance(op, w);

      const Matrix merged = oft::io::LycorisAdapter::merge(m, oft::view(w), s);
      const Difference d = compare(merged, c.matrix(path + ".merged." + std::to_string(i)), tol);
      EXPECT_LE(d.worst_ratio, 1.0) << "merge: worst difference " << d.worst;
      merge_worst.worst = std::max(merge_worst.worst, d.worst);
      merge_worst.worst_ratio = std::max(merge_worst.worst_ratio, d.worst_ratio);

      // The same math in double from the same float data: nearer the exact value, so within
      // the same bound of LyCORIS's float result.
      std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
      const oft::lycoris::DiagOft<double> op_d(m.blocks, m.block_size, blocks.data(), double(m.alpha),
                                               std::vector<double>(m.rescale.begin(), m.rescale.end()), s,
                                               m.rule);
      const Difference dd = compare(op_d.merge(oft::view(wd)), c.matrix(path + ".merged." + std::to_string(i)), tol);
      EXPECT_LE(dd.worst_ratio, 1.0) << "double merge: worst difference " << dd.worst;
      double_worst.worst = std::max(double_worst.worst, dd.worst);
      double_worst.worst_ratio = std::max(double_worst.worst_ratio, dd.worst_ratio);

      const std::string forward_key = path + ".forward." + std::to_string(i);
      if (!c.has(forward_key)) {
        // Only lycoris-lora's bypass forward at s != 1 is missing: it raises there (the fixture
        // script records it; docs/dialects.md explains it).
        EXPECT_TRUE(c.bypass() && s != 1.0) << forward_key << " missing";
        continue;
      }
      const float* b = bias.empty() ? nullptr : bias.data();
      const Matrix out = c.bypass() ? op.forward_bypass(oft::view(x), oft::view(w), b)
                                    : op.forward(oft::view(x), oft::view(w), b);
      const Difference f = compare(out, c.matrix(forward_key), forward_tolerance(op, x, w, bias, c.bypass()));
      EXPECT_LE(f.worst_ratio, 1.0) << "forward: worst difference " << f.worst;
      forward_worst.worst = std::max(forward_worst.worst, f.worst);
      forward_worst.worst_ratio = std::max(forward_worst.worst_ratio, f.worst_ratio);
      ++forwards;
    }
  }
  EXPECT_GT(forwards, 0);
  std::printf("[ parity ] %s: merge worst %.3g (%.3f of the bound), double merge %.3g (%.3f), "
              "forward %.3g (%.3f) over %d forwards\n",
              GetParam().c_str(), merge_worst.worst, merge_worst.worst_ratio, double_worst.worst,
              double_worst.worst_ratio, forward_worst.worst, forward_worst.worst_ratio, forwards);
}

// The gradients against LyCORIS's own autograd through its merge (grad of sum(C * W'(s)) with
// respect to oft_blocks and rescale, float32), oft's computed in double from the same float
// data. Tolerance, the repository's second policy (tests/test_support.hpp: c n eps scale where a
// rigorous bound is impractical, LU solves): the float error of LyCORIS's chain, G = sum over the
// cols columns (length cols), the Cayley VJP (I + R)^T G (I - Q)^-T (norm <= 2, a solve: 4b + 8
// terms, kappa^2) and the constraint's projection (at most doubling), with c = 4:
//   |d oft_blocks error| <= 4 (cols + 4b + 8) u kappa^2 (|s| + |1 - s|) max_i || |W_i| |r C_i|^T ||_F
//   |d rescale_j error|  <= 4 (cols + 4b + 8) u kappa (|s| + |1 - s|) sum_col ||w_blk,col|| |C_j,col|
// (kappa = max_i sqrt(1 + ||Q_i||_F^2), W_i and C_i block i's rows).
TEST(LycorisParityConventions, GradientsMatchLycorisAutograd) {
  int checked = 0;
  double worst_blocks = 0.0, worst_rescale = 0.0;
  for (const std::string& name : fixture_cases()) {
    const LycorisCase c = LycorisCase::load(name);
    const std::vector<double> multipliers = c.multipliers();
    for (const std::string& path : c.modules()) {
      if (!c.has(path + ".grad_c")) continue;
      const LycorisDiagOftModule& m = c.module(path);
      const oft::Index b = m.block_size, out = m.out_features();
      const MatrixD w = c.matrix(path + ".weight").cast<double>();
      const MatrixD cm = c.matrix(path + ".grad_c").cast<double>();
      const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
      const std::vector<double> rescale(m.rescale.begin(), m.rescale.end());
      for (std::size_t i = 0; i < multipliers.size(); ++i) {
        const std::string key = path + ".grad_blocks." + std::to_string(i);
        if (!c.has(key)) continue;
        const double s = multipliers[i];
        const oft::lycoris::DiagOft<double> op(m.blocks, b, blocks.data(), double(m.alpha), rescale, s, m.rule);
        std::vector<double> d_blocks(blocks.size()), d_rescale(rescale.size());
        (void)op.backward_merge(oft::view(w), oft::view(cm), d_blocks.data(), m.rescaled() ? d_rescale.data() : nullptr);

        double kappa = 1.0, magnitude = 0.0;
        for (oft::Index g = 0; g < m.blocks; ++g) {
          kappa = std::max(kappa, std::sqrt(1.0 + 2.0 * op.generators().values().row(g).squaredNorm()));
          MatrixD rc = cm.block(g * b, 0, b, cm.cols()).cwiseAbs();
          if (m.rescaled())
            for (oft::Index r = 0; r < b; ++r) rc.row(r) *= std::abs(rescale[size_t(g * b + r)]);
          magnitude = std::max(magnitude, (w.block(g * b, 0, b, w.cols()).cwiseAbs() * rc.transpose()).norm());
        }
        const double terms = double(w.cols() + 4 * b + 8), cs = std::abs(s) + std::abs(1.0 - s);
        const double tol_blocks = 4.0 * terms * kUnitRoundoff * kappa * kappa * cs * magnitude;
        const std::vector<float> theirs = c.vector(key);
        ASSERT_EQ(theirs.size(), d_blocks.size());
        for (std::size_t j = 0; j < theirs.size(); ++j) {
          const double diff = std::abs(d_blocks[j] - double(theirs[j]));
          EXPECT_LE(diff, tol_blocks) << name << " " << path << " s=" << s << " d oft_blocks[" << j << "]";
          worst_blocks = std::max(worst_blocks, diff / tol_blocks);
        }
        if (m.rescaled()) {
          const std::vector<float> their_rescale = c.vector(path + ".grad_rescale." + std::to_string(i));
          ASSERT_EQ(their_rescale.size(), size_t(out));
          for (oft::Index j = 0; j < out; ++j) {
            const oft::Index g = j / b;
            double sum = 0.0;
            for (oft::Index col = 0; col < w.cols(); ++col)
              sum += w.block(g * b, col, b, 1).norm() * std::abs(cm(j, col));
            const double tol = 4.0 * terms * kUnitRoundoff * kappa * cs * sum;
            const double diff = std::abs(d_rescale[size_t(j)] - double(their_rescale[size_t(j)]));
            EXPECT_LE(diff, tol) << name << " " << path << " s=" << s << " d rescale[" << j << "]";
            worst_rescale = std::max(worst_rescale, diff / tol);
          }
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 27);  // 3 cases x 3 modules x 3 multipliers
  std::printf("[ parity ] gradients vs LyCORIS autograd: oft_blocks within %.3f of the bound, rescale %.3f, "
              "%d module gradients\n", worst_blocks, worst_rescale, checked);
}

// kohya FLUX (networks/oft_flux.py): a fused layer's rows split, each split its own kohya
// diag-OFT with its own constraint alpha * split_dim. merge() of the module and each split's
// forward (kohya's forward concatenates them) against the reference, each within its split's
// bound; the constraint decisions per split are the reference's.
TEST(LycorisParityConventions, KohyaFluxSplitsMergeAndForwardAsKohya) {
  const LycorisCase c = LycorisCase::load("kohya_flux");
  EXPECT_EQ(c.adapter.dialect, oft::io::LycorisAdapter::Dialect::Kohya);
  const std::vector<double> multipliers = c.multipliers();
  Difference merge_worst, forward_worst;
  int active = 0, inactive = 0;
  for (const std::string& path : c.modules()) {
    SCOPED_TRACE(path);
    const LycorisDiagOftModule& m = c.module(path);
    ASSERT_GE(m.splits.size(), 3u);
    EXPECT_THROW((void)m.diag_oft(), std::invalid_argument);
    const Matrix w = c.matrix(path + ".weight"), x = c.matrix(path + ".x");
    const std::vector<float> bias = c.vector(path + ".bias");
    const std::vector<bool> decided = c.meta.at("constraint_active").at(path).get<std::vector<bool>>();
    ASSERT_EQ(decided.size(), m.splits.size());
    for (std::size_t i = 0; i < multipliers.size(); ++i) {
      const double s = multipliers[i];
      const Matrix merged = oft::io::LycorisAdapter::merge(m, oft::view(w), s);
      const Matrix want = c.matrix(path + ".merged." + std::to_string(i));
      const Matrix want_forward = c.matrix(path + ".forward." + std::to_string(i));
      oft::Index row = 0;
      for (std::size_t p = 0; p < m.splits.size(); ++p) {
        const LycorisDiagOftModule& part = m.splits[p];
        const oft::Index rows = part.out_features();
        const oft::lycoris::DiagOft<float> op = part.diag_oft(s);
        if (i == 0) (op.constraint().active ? active : inactive) += 1;
        EXPECT_EQ(op.constraint().active, bool(decided[p])) << part.name;
        const Matrix w_part = w.block(row, 0, rows, w.cols());
        const Difference d = compare(Matrix(merged.block(row, 0, rows, w.cols())),
                                     Matrix(want.block(row, 0, rows, w.cols())), merge_tolerance(op, w_part));
        EXPECT_LE(d.worst_ratio, 1.0) << part.name << " s=" << s;
        merge_worst.worst = std::max(merge_worst.worst, d.worst);
        merge_worst.worst_ratio = std::max(merge_worst.worst_ratio, d.worst_ratio);
        const std::vector<float> bias_part(bias.begin() + row, bias.begin() + row + rows);
        const Difference f = compare(op.forward(oft::view(x), oft::view(w_part), bias_part.data()),
                                     Matrix(want_forward.block(0, row, x.rows(), rows)),
                                     forward_tolerance(op, x, w_part, bias_part, false));
        EXPECT_LE(f.worst_ratio, 1.0) << part.name << " s=" << s;
        forward_worst.worst = std::max(forward_worst.worst, f.worst);
        forward_worst.worst_ratio = std::max(forward_worst.worst_ratio, f.worst_ratio);
        row += rows;
      }
      EXPECT_EQ(row, w.rows());
    }
  }
  EXPECT_GT(active, 0);
  EXPECT_GT(inactive, 0);
  std::printf("[ parity ] kohya_flux: merge worst %.3g (%.3f of the bound), forward %.3g (%.3f)\n",
              merge_worst.worst, merge_worst.worst_ratio, forward_worst.worst, forward_worst.worst_ratio);
}

// MiniLM's query (384 -> 384) and intermediate dense (384 -> 1536) with LyCORIS's linear_dim 8
// (b = 8, k = 48 and 192), constraint binding on the query only: the fixture keeps the first two
// blocks' rows of each weight and of LyCORIS's merges (a merged row depends on its block's rows
// alone, the constraint on all blocks, which the adapter file holds whole). Merged with the
// other rows zero, those rows match within the bound.
TEST(LycorisParityConventions, MiniLmLayersMergeAsLycoris) {
  const LycorisCase c = LycorisCase::load("lycoris_minilm");
  EXPECT_EQ(c.meta.at("lycoris_version").get<std::string>(), "4.1.3");
  Difference worst;
  int merges = 0;
  for (const std::string& path : c.modules()) {
    const LycorisDiagOftModule& m = c.module(path);
    EXPECT_EQ(m.block_size, 8) << path;
    EXPECT_EQ(m.out_features(), c.meta.at("out_features").at(path).get<oft::Index>()) << path;
    const Matrix rows = c.matrix(path + ".weight_rows");
    Matrix w = Matrix::Zero(m.out_features(), rows.cols());
    w.topRows(rows.rows()) = rows;
    EXPECT_EQ(m.diag_oft().constraint().active, c.meta.at("constraint_active").at(path).get<bool>()) << path;
    const std::vector<double> multipliers = c.multipliers();
    for (std::size_t i = 0; i < multipliers.size(); ++i) {
      const std::string key = path + ".merged_rows." + std::to_string(i);
      if (!c.has(key)) continue;
      const Matrix merged = oft::io::LycorisAdapter::merge(m, oft::view(w), multipliers[i]);
      const MatrixD tol = merge_tolerance(m.diag_oft(multipliers[i]), w);
      const Difference d = compare(Matrix(merged.topRows(rows.rows())), c.matrix(key),
                                   MatrixD(tol.topRows(rows.rows())));
      EXPECT_LE(d.worst_ratio, 1.0) << path << " s=" << multipliers[i] << ": worst " << d.worst;
      worst.worst = std::max(worst.worst, d.worst);
      worst.worst_ratio = std::max(worst.worst_ratio, d.worst_ratio);
      ++merges;
    }
  }
  EXPECT_EQ(merges, 4);
  std::printf("[ parity ] lycoris_minilm: merge worst %.3g (%.3f of the bound) over %d merges (%s)\n", worst.worst,
              worst.worst_ratio, merges, c.meta.at("model").get<std::string>().c_str());
}

// Convolutions (Conv2d 3x3, 1x1, a non-square 1x3 kernel, Conv1d; rescale [out, 1, 1(, 1)]):
// LyCORIS rotates dim 0 of the kernel with the rest flattened, so merge() of the kernel viewed
// as [out, in kh kw] is LyCORIS's merged kernel, within the same bound. (make_fixtures.py checks
// that LyCORIS's own conv forward is the convolution with that kernel.)
TEST(LycorisParityConventions, ConvolutionKernelsMergeAsLycoris) {
  const LycorisCase c = LycorisCase::load("lycoris_conv_b4");
  const std::vector<double> multipliers = c.multipliers();
  Difference worst;
  int merges = 0;
  for (const std::string& path : c.modules()) {
    const LycorisDiagOftModule& m = c.module(path);
    EXPECT_EQ(m.rescale_shape.size(), c.expected.tensor(path + ".weight").shape.size()) << path;
    const Matrix w = c.flat(path + ".weight");
    for (std::size_t i = 0; i < multipliers.size(); ++i) {
      const Difference d = compare(oft::io::LycorisAdapter::merge(m, oft::view(w), multipliers[i]),
                                   c.flat(path + ".merged." + std::to_string(i)),
                                   merge_tolerance(m.diag_oft(multipliers[i]), w));
      EXPECT_LE(d.worst_ratio, 1.0) << path << " s=" << multipliers[i] << ": worst " << d.worst;
      worst.worst = std::max(worst.worst, d.worst);
      worst.worst_ratio = std::max(worst.worst_ratio, d.worst_ratio);
      ++merges;
    }
  }
  EXPECT_EQ(merges, 20);
  std::printf("[ parity ] lycoris_conv_b4: merge worst %.3g (%.3f of the bound) over %d kernels\n", worst.worst,
              worst.worst_ratio, merges);
}

// LyCORIS's bypass forward raises at s != 1 on a 2-D input in 4.1.3: the fixtures say so, and
// the tests above rely on it being the only missing output.
TEST_P(LycorisParity, BypassFailuresAreTheRecordedOnes) {
  const LycorisCase c = LycorisCase::load(GetParam());
  if (c.kohya()) {  // kohya's forward has no bypass mode, and every forward was recorded
    EXPECT_FALSE(c.meta.contains("forward_failed"));
    return;
  }
  const auto failed = c.meta.at("forward_failed").at("multipliers");
  if (!c.bypass()) {
    EXPECT_TRUE(failed.empty());
    return;
  }
  for (const std::string& path : c.modules()) {
    std::vector<double> expected;
    for (const double s : c.multipliers())
      if (s != 1.0) expected.push_back(s);
    EXPECT_EQ(failed.at(path).get<std::vector<double>>(), expected) << path;
  }
}

TEST_P(LycorisParity, ConstraintDecisionsMatchLycoris) {
  const LycorisCase c = LycorisCase::load(GetParam());
  for (const std::string& path : c.modules()) {
    const oft::lycoris::DiagOft<float> op = c.module(path).diag_oft();
    EXPECT_EQ(op.constraint().active, c.meta.at("constraint_active").at(path).get<bool>()) << path;
    EXPECT_DOUBLE_EQ(op.constraint().radius, double(c.module(path).alpha) * double(op.out_features()));
  }
}

/// max over modules of the worst difference / bound of a wrong variant at multiplier index i;
/// -1 when no module of the case has the variant.
struct Wrong {
  const char* what;
  // Builds the wrong module from the right one; false when it does not apply to this module.
  bool (*make)(const LycorisDiagOftModule& right, LycorisDiagOftModule& wrong);
};

/// Whether the module's R differs visibly from I: kohya's alpha = 0 scales Q by ~1e-8, so no
/// convention about Q can show there.
bool rotates(const LycorisDiagOftModule& m) {
  return !(m.rule == oft::lycoris::ConstraintRule::Kohya && m.alpha <= 0.0f);
}

bool transposed(const LycorisDiagOftModule& right, LycorisDiagOftModule& wrong) {
  wrong = right;  // B_i^T: Q -> -Q, R -> R^T (for the Cayley transform the same as a wrong sign)
  const oft::Index b = right.block_size;
  for (oft::Index k = 0; k < right.blocks; ++k)
    for (oft::Index p = 0; p < b; ++p)
      for (oft::Index q = 0; q < b; ++q)
        wrong.oft_blocks[size_t(k * b * b + p * b + q)] = right.oft_blocks[size_t(k * b * b + q * b + p)];
  return b > 1 && rotates(right);
}
bool half_skew(const LycorisDiagOftModule& right, LycorisDiagOftModule& wrong) {
  wrong = right;  // PEFT's BOFT convention, 0.5 (B - B^T)
  for (float& v : wrong.oft_blocks) v *= 0.5f;
  return right.block_size > 1 && !right.diag_oft().constraint().active && rotates(right);
}
bool no_rescale(const LycorisDiagOftModule& right, LycorisDiagOftModule& wrong) {
  wrong = right;  // ComfyUI loads rescale and never applies it (issue 30)
  wrong.rescale.clear();
  return right.rescaled();
}
bool no_constraint(const LycorisDiagOftModule& right, LycorisDiagOftModule& wrong) {
  wrong = right;
  wrong.alpha = 0.0f;
  wrong.rule = oft::lycoris::ConstraintRule::Lycoris;  // alpha = 0 is "off" only in LyCORIS's rule
  return right.diag_oft().constraint().active && right.alpha > 0.0f;
}
bool lycoris_rule_on_kohya(const LycorisDiagOftModule& right, LycorisDiagOftModule& wrong) {
  wrong = right;  // what a LyCORIS loader does with a kohya file: alpha = 0 read as no constraint
  wrong.rule = oft::lycoris::ConstraintRule::Lycoris;
  return right.rule == oft::lycoris::ConstraintRule::Kohya && right.alpha <= 0.0f;
}

TEST(LycorisParityConventions, EachWrongConventionBreaksTheBound) {
  const Wrong variants[] = {{"transposed R (or Q negated)", transposed},
                            {"skew part 0.5 (B - B^T)", half_skew},
                            {"rescale ignored", no_rescale},
                            {"constraint ignored", no_constraint},
                            {"LyCORIS rule on kohya alpha=0", lycoris_rule_on_kohya}};
  for (const Wrong& variant : variants) {
    double weakest = -1.0;  // the smallest worst-ratio over the modules it applies to
    int checked = 0;
    for (const std::string& name : fixture_cases()) {
      const LycorisCase c = LycorisCase::load(name);
      const std::vector<double> multipliers = c.multipliers();
      for (const std::string& path : c.modules()) {
        LycorisDiagOftModule wrong;
        if (!variant.make(c.module(path), wrong)) continue;
        const Matrix w = c.matrix(path + ".weight");
        for (std::size_t i = 0; i < multipliers.size(); ++i) {
          if (multipliers[i] == 0.0) continue;  // M = I: only the rescale is left to see
          const MatrixD tol = merge_tolerance(c.module(path).diag_oft(multipliers[i]), w);
          const Difference d = compare(oft::io::LycorisAdapter::merge(wrong, oft::view(w), multipliers[i]),
                                       c.matrix(path + ".merged." + std::to_string(i)), tol);
          EXPECT_GT(d.worst_ratio, 1.0) << variant.what << " passes for " << name << " " << path
                                        << " at s=" << multipliers[i];
          weakest = weakest < 0 ? d.worst_ratio : std::min(weakest, d.worst_ratio);
          ++checked;
        }
      }
    }
    EXPECT_GT(checked, 0) << variant.what << ": no fixture module exercises it";
    std::printf("[ wrong  ] %-28s fails the bound by >= %.0fx over %d merges\n", variant.what, weakest, checked);
  }
}

// The bias: LyCORIS's default forward leaves it alone, its bypass forward rotates and rescales
// it. Computing one mode's forward for the other's fixture breaks the bound.
TEST(LycorisParityConventions, BiasModeMatters) {
  int checked = 0;
  for (const std::string& name : fixture_cases()) {
    const LycorisCase c = LycorisCase::load(name);
    for (const std::string& path : c.modules()) {
      if (!c.has(path + ".bias") || !rotates(c.module(path))) continue;
      const Matrix w = c.matrix(path + ".weight"), x = c.matrix(path + ".x");
      const std::vector<float> bias = c.vector(path + ".bias");
      const oft::lycoris::DiagOft<float> op = c.module(path).diag_oft(1.0);
      const Matrix wrong = c.bypass() ? op.forward(oft::view(x), oft::view(w), bias.data())
                                      : op.forward_bypass(oft::view(x), oft::view(w), bias.data());
      const Difference d = compare(wrong, c.matrix(path + ".forward.0"),
                                   forward_tolerance(op, x, w, bias, c.bypass()));
      EXPECT_GT(d.worst_ratio, 1.0) << name << " " << path;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// Every fixture set has a binding and a non-binding constraint, and a rescaled module: the
// cases above are not vacuous.
TEST(LycorisParityConventions, FixturesCoverTheRegimes) {
  int active = 0, inactive_with_alpha = 0, rescaled = 0, bypass = 0;
  for (const std::string& name : fixture_cases()) {
    const LycorisCase c = LycorisCase::load(name);
    bypass += c.bypass();
    for (const std::string& path : c.modules()) {
      const LycorisDiagOftModule& m = c.module(path);
      const bool on = m.diag_oft().constraint().active;
      active += on;
      inactive_with_alpha += !on && m.alpha > 0.0f;
      rescaled += m.rescaled();
    }
  }
  EXPECT_GT(active, 0);
  EXPECT_GT(inactive_with_alpha, 0);
  EXPECT_GT(rescaled, 0);
  EXPECT_GT(bypass, 0);
}

// Where alpha > 0 the two trainers' rules agree to ~1e-8 relative (kohya's factor is
// (c + 1e-8) / (n + 1e-8), LyCORIS's c / (n + 1e-8)): either rule meets the other's fixture.
TEST(LycorisParityConventions, TheRulesAgreeForPositiveAlpha) {
  int checked = 0;
  for (const std::string& name : fixture_cases()) {
    const LycorisCase c = LycorisCase::load(name);
    for (const std::string& path : c.modules()) {
      LycorisDiagOftModule other = c.module(path);
      if (other.alpha <= 0.0f) continue;
      other.rule = other.rule == oft::lycoris::ConstraintRule::Kohya ? oft::lycoris::ConstraintRule::Lycoris
                                                                     : oft::lycoris::ConstraintRule::Kohya;
      const Matrix w = c.matrix(path + ".weight");
      const Difference d = compare(oft::io::LycorisAdapter::merge(other, oft::view(w)), c.matrix(path + ".merged.0"),
                                   merge_tolerance(c.module(path).diag_oft(), w));
      EXPECT_LE(d.worst_ratio, 1.0) << name << " " << path;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LycorisParity, ::testing::ValuesIn(fixture_cases()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace oft_dialects_test
