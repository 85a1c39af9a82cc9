// oft's LyCORIS BOFT (oft::lycoris::Boft in include/oft/lycoris.hpp, read by
// include/oft/io/lycoris_adapter.hpp) against lycoris-lora 4.1.3's own numbers: the adapters
// LyCORIS saved (algo "boft") and the merged weights and Linear forward outputs it computed
// (fixtures/lycoris_boft_*, made by make_fixtures.py), to the float rounding bound derived below;
// and the conventions a loader can get wrong (R^T per block as in diag-OFT, no permutation or the
// inverse one, the stages in the other order, Z T instead of Z T^T on the output side), each shown
// to break that bound.
//
// The bound, per element, derived before looking at any difference (u = 2^-24). Both sides compute
// W' = diag(r) T_{m-1} ... T_0 W in float, T_i = P_i^T blockdiag(M_{i,d}) P_i, M = s R + (1 - s) I.
// One stage on a column v: R by an LU solve (oft) or an explicit inverse then a product (LyCORIS),
// a forward error of at most about 2b u kappa, kappa = max over all m N blocks of
// sqrt(1 + ||Q_{i,d}||_F^2) >= cond(I - Q); the block products b u; the blend a few more: at most
// (4b + 8) u kappa cs ||v||_2 in norm, cs = |s| + |1 - s| >= ||M||_2 (the permutations are exact).
// Each stage multiplies norms by at most cs, so after m stages the error of column j is at most
// m (4b + 8) u kappa cs^m ||w_j||_2, w_j = W's column j over all out rows (the stages mix them
// all); then LyCORIS's rescale, W' - W and + W: 4 more roundings of values up to (1 + 2|r_i| + |r_i
// - 1|) cs^m ||w_j||. Each side is within (m (4b + 8) + 4) u kappa cs^m (1 + 2|r_i| + |r_i - 1|)
// ||w_j||_2 of the exact value; the two within twice that. The forward adds the GEMMs (X W^T on
// oft's side, X W^T and X (W' - W)^T on LyCORIS's: in u sum_c |x_c| (|W'_jc| + |W_jc|)) and the
// bias: ||w_j|| is replaced by a_t = sum_c |x_tc| ||w_c||_2 (which bounds both || |W| |x_t| ||_2
// and those GEMMs' terms), the constant by in + m (4b + 8) + 4, plus 2 u |bias_j|.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <oft/lycoris.hpp>
#include <string>
#include <vector>

#include "io_test_support.hpp"
#include "lycoris_fixtures.hpp"

namespace oft_dialects_test {
namespace {

using oft::Index;
using oft::io::LycorisDiagOftModule;

const std::vector<std::string>& boft_cases() {
  static const std::vector<std::string> cases{"lycoris_boft_plain_b4",
                                              "lycoris_boft_constrained_b8",
                                              "lycoris_boft_rescaled_b4", "lycoris_boft_conv_b4"};
  return cases;
}

/// The per-element forward bound of the file comment for the N x out output.
MatrixD boft_forward_tolerance(const oft::lycoris::Boft<float>& op, const Matrix& x,
                               const Matrix& w, const std::vector<float>& bias) {
  const double s = op.multiplier(), cs = std::abs(s) + std::abs(1.0 - s);
  const double constant = double(x.cols() + op.stages() * (4 * op.block_size() + 8) + 4);
  const double scale =
      2.0 * constant * kUnitRoundoff * boft_kappa(op) * std::pow(cs, double(op.stages()));
  MatrixD tol(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t) {
    double a = 0.0;
    for (Index c = 0; c < x.cols(); ++c)
      a += std::abs(double(x(t, c))) * w.col(c).cast<double>().norm();
    for (Index j = 0; j < w.rows(); ++j)
      tol(t, j) = scale * rescale_factor(op.rescale(), j) * a +
                  (bias.empty() ? 0.0 : 2.0 * kUnitRoundoff * std::abs(double(bias[size_t(j)])));
  }
  return tol;
}

void fold(Difference& into, const Difference& d) {
  into.worst = std::max(into.worst, d.worst);
  into.worst_ratio = std::max(into.worst_ratio, d.worst_ratio);
}

class LycorisBoftParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LycorisBoftParity, ReadsWhatLycorisSaved) {
  const LycorisCase c = LycorisCase::load(GetParam());
  EXPECT_EQ(c.meta.at("lycoris_version").get<std::string>(), "4.1.3");
  EXPECT_EQ(c.meta.at("case").at("algo").get<std::string>(), "boft");
  EXPECT_EQ(c.adapter.dialect, oft::io::LycorisAdapter::Dialect::Lycoris);
  ASSERT_EQ(c.adapter.modules.size(), c.modules().size());
  for (const std::string& path : c.modules()) {
    const LycorisDiagOftModule& m = c.module(path);
    const std::vector<Index> shape =
        c.meta.at("oft_blocks_shape").at(path).get<std::vector<Index>>();
    ASSERT_EQ(shape.size(), 4u);
    EXPECT_EQ(m.stages, shape[0]) << path;
    EXPECT_EQ(m.blocks, shape[1]) << path;
    EXPECT_EQ(m.block_size, shape[2]) << path;
    EXPECT_EQ(m.rescaled(), c.meta.at("case").at("rescaled").get<bool>()) << path;
    // LyCORIS's own constraint decision (make_fixtures.py: ||Q||_F + 1e-8 > alpha * out).
    EXPECT_EQ(m.boft_op().constraint().active, c.meta.at("constraint_active").at(path).get<bool>())
        << path;
    EXPECT_THROW((void)m.diag_oft(), std::invalid_argument);
  }
}

// merge() (float, and double from the same float data) and the Linear forward, every module and
// multiplier, within the bound of the file comment.
TEST_P(LycorisBoftParity, MergeAndForwardMatchLycoris) {
  const LycorisCase c = LycorisCase::load(GetParam());
  const std::vector<double> multipliers = c.multipliers();
  Difference merge_worst, double_worst, forward_worst;
  int merges = 0, forwards = 0;
  for (const std::string& path : c.modules()) {
    SCOPED_TRACE(path);
    const LycorisDiagOftModule& m = c.module(path);
    const Matrix w = c.flat(path + ".weight");
    const MatrixD wd = w.cast<double>();
    const std::vector<float> bias =
        c.has(path + ".bias") ? c.vector(path + ".bias") : std::vector<float>{};
    for (std::size_t i = 0; i < multipliers.size(); ++i) {
      const double s = multipliers[i];
      SCOPED_TRACE("multiplier " + std::to_string(s));
      const oft::lycoris::Boft<float> op = m.boft_op(s);
      const Matrix want = c.flat(path + ".merged." + std::to_string(i));
      const MatrixD tol = boft_merge_tolerance(op, w);
      const Difference d = compare(oft::io::LycorisAdapter::merge(m, oft::view(w), s), want, tol);
      EXPECT_LE(d.worst_ratio, 1.0) << "merge: worst difference " << d.worst;
      fold(merge_worst, d);
      ++merges;

      const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
      const oft::lycoris::Boft<double> op_d(
          m.stages, m.blocks, m.block_size, blocks.data(), double(m.alpha),
          std::vector<double>(m.rescale.begin(), m.rescale.end()), s);
      const Difference dd = compare(op_d.merge(oft::view(wd)), want, tol);
      EXPECT_LE(dd.worst_ratio, 1.0) << "double merge: worst difference " << dd.worst;
      fold(double_worst, dd);

      if (!c.has(path + ".x")) continue;  // the conv case: LyCORIS's forward is its merged kernel's
      const Matrix x = c.matrix(path + ".x");
      const Matrix out =
          op.forward(oft::view(x), oft::view(w), bias.empty() ? nullptr : bias.data());
      const Difference f = compare(out, c.matrix(path + ".forward." + std::to_string(i)),
                                   boft_forward_tolerance(op, x, w, bias));
      EXPECT_LE(f.worst_ratio, 1.0) << "forward: worst difference " << f.worst;
      fold(forward_worst, f);
      ++forwards;
    }
  }
  EXPECT_GT(merges, 0);
  std::printf(
      "[ parity ] %s: merge worst %.3g (%.3f of the bound), double merge %.3g (%.3f), "
      "forward %.3g (%.3f) over %d merges, %d forwards\n",
      GetParam().c_str(), merge_worst.worst, merge_worst.worst_ratio, double_worst.worst,
      double_worst.worst_ratio, forward_worst.worst, forward_worst.worst_ratio, merges, forwards);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LycorisBoftParity, ::testing::ValuesIn(boft_cases()));

// The gradients against LyCORIS's own autograd through its merge (grad of sum(C * W'(s)) with
// respect to oft_blocks and rescale, float32), oft's backward_merge in double from the same float
// data. The bound, norm-wise, derived before any difference was looked at (LyCORIS's float error
// alone: oft's double result is nearer the exact value). Stage i's block gradient is
// dM = dY G^T with ||G||_F <= cs^i ||W||_F and ||dY||_F <= cs^(m-1-i) max(1, |r|) ||C||_F; G and dY
// carry at most m (4b + 8) u kappa relative error from the stages (the merge bound's argument)
// and the product cols u more; dR = s dM (|s| <= cs); the Cayley VJP (I + R)^T dR (I - Q)^-T
// multiplies norms by at most 2 and adds (4b + 8) u kappa^2 of its solve; where the constraint
// is active (theta_c = f theta, f = c / n) its linear map d theta = f d theta_c - (f / n^2)
// <theta, d theta_c> 2 theta has norm at most 2 f (f = 1 when inactive), and dB = dQ - dQ^T
// doubles once more:
//   |d oft_blocks error| <= 8 (cols + m (4b + 8)) u kappa^2 cs^m max(1, |r|) f ||W||_F ||C||_F,
//   |d rescale_j error|  <= 2 (cols + m (4b + 8)) u kappa cs^m sum_c ||w_c||_2 |C_jc|.
TEST(LycorisBoftConventions, GradientsMatchLycorisAutograd) {
  int checked = 0;
  double worst_blocks = 0.0, worst_rescale = 0.0;
  double signal = 1e300;  // min over module gradients of max |their gradient| / bound
  for (const std::string& name : boft_cases()) {
    const LycorisCase c = LycorisCase::load(name);
    const std::vector<double> multipliers = c.multipliers();
    for (const std::string& path : c.modules()) {
      const LycorisDiagOftModule& m = c.module(path);
      const Index b = m.block_size, out = m.out_features();
      const MatrixD w = c.flat(path + ".weight").cast<double>();
      const MatrixD cm = c.flat(path + ".grad_c").cast<double>();
      const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
      const std::vector<double> rescale(m.rescale.begin(), m.rescale.end());
      double rmax = 1.0;
      for (const double r : rescale) rmax = std::max(rmax, std::abs(r));
      for (std::size_t i = 0; i < multipliers.size(); ++i) {
        const double s = multipliers[i];
        const oft::lycoris::Boft<double> op(m.stages, m.blocks, b, blocks.data(), double(m.alpha),
                                            rescale, s);
        std::vector<double> d_blocks(blocks.size()), d_rescale(rescale.size());
        (void)op.backward_merge(oft::view(w), oft::view(cm), d_blocks.data(),
                                m.rescaled() ? d_rescale.data() : nullptr);
        const double kappa = boft_kappa(op), cs = std::abs(s) + std::abs(1.0 - s);
        const double terms = double(w.cols() + m.stages * (4 * b + 8));
        const double grow = std::pow(cs, double(m.stages));
        const double f = double(op.constraint().factor);
        const double tol_blocks =
            8.0 * terms * kUnitRoundoff * kappa * kappa * grow * rmax * f * w.norm() * cm.norm();
        const std::vector<float> theirs = c.vector(path + ".grad_blocks." + std::to_string(i));
        ASSERT_EQ(theirs.size(), d_blocks.size());
        double largest = 0.0;
        for (const float v : theirs) largest = std::max(largest, std::abs(double(v)));
        signal = std::min(signal, largest / tol_blocks);
        for (std::size_t j = 0; j < theirs.size(); ++j) {
          const double diff = std::abs(d_blocks[j] - double(theirs[j]));
          EXPECT_LE(diff, tol_blocks)
              << name << " " << path << " s=" << s << " d oft_blocks[" << j << "]";
          worst_blocks = std::max(worst_blocks, diff / tol_blocks);
        }
        if (m.rescaled()) {
          const std::vector<float> their_rescale =
              c.vector(path + ".grad_rescale." + std::to_string(i));
          ASSERT_EQ(their_rescale.size(), size_t(out));
          for (Index j = 0; j < out; ++j) {
            double sum = 0.0;
            for (Index col = 0; col < w.cols(); ++col)
              sum += w.col(col).norm() * std::abs(cm(j, col));
            const double tol = 2.0 * terms * kUnitRoundoff * kappa * grow * sum;
            const double diff = std::abs(d_rescale[size_t(j)] - double(their_rescale[size_t(j)]));
            EXPECT_LE(diff, tol) << name << " " << path << " s=" << s << " d rescale[" << j << "]";
            worst_rescale = std::max(worst_rescale, diff / tol);
          }
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 30);  // 3 Linear cases x 3 modules + 1 conv module, x 3 multipliers
  // The bound is not vacuous: in every module gradient some element exceeds it (measured: by 11x
  // at least, with cs^m = 2.5^m at s = -0.75 making it loosest), so a zero gradient breaks it, and
  // a negated one, or a transposed one (dB is antisymmetric: dB^T = -dB), twice as much.
  EXPECT_GT(signal, 1.0);
  std::printf(
      "[ parity ] BOFT gradients vs LyCORIS autograd: oft_blocks within %.3g of the bound, "
      "rescale %.3g, %d module gradients; the largest gradient element is at least %.3g bounds\n",
      worst_blocks, worst_rescale, checked, signal);
}

// backward_merge against central finite differences of merge() in double, through every piece
// (a constrained module, s = 0.5, rescale): the derivative oft reports is the derivative of what
// oft computes.
TEST(LycorisBoft, BackwardMergeMatchesFiniteDifferences) {
  const LycorisCase c = LycorisCase::load("lycoris_boft_rescaled_b4");
  const LycorisDiagOftModule& m = c.module("fc2");
  const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
  const std::vector<double> rescale(m.rescale.begin(), m.rescale.end());
  const MatrixD w = c.flat("fc2.weight").cast<double>();
  const MatrixD cm = c.flat("fc2.grad_c").cast<double>();
  auto loss = [&](const std::vector<double>& bl, const std::vector<double>& re,
                  const MatrixD& base) {
    const oft::lycoris::Boft<double> op(m.stages, m.blocks, m.block_size, bl.data(),
                                        double(m.alpha), re, 0.5);
    return op.merge(oft::view(base)).cwiseProduct(cm).sum();
  };
  const oft::lycoris::Boft<double> op(m.stages, m.blocks, m.block_size, blocks.data(),
                                      double(m.alpha), rescale, 0.5);
  ASSERT_TRUE(op.constraint().active);
  std::vector<double> d_blocks(blocks.size()), d_rescale(rescale.size());
  const MatrixD dw =
      op.backward_merge(oft::view(w), oft::view(cm), d_blocks.data(), d_rescale.data());
  const double h = 1e-6;
  double worst = 0.0;
  int probes = 0;
  for (std::size_t j = 0; j < blocks.size(); j += 7, ++probes) {
    std::vector<double> up = blocks, down = blocks;
    up[j] += h;
    down[j] -= h;
    worst = std::max(
        worst, std::abs((loss(up, rescale, w) - loss(down, rescale, w)) / (2 * h) - d_blocks[j]));
  }
  for (std::size_t j = 0; j < rescale.size(); j += 5, ++probes) {
    std::vector<double> up = rescale, down = rescale;
    up[j] += h;
    down[j] -= h;
    worst = std::max(
        worst, std::abs((loss(blocks, up, w) - loss(blocks, down, w)) / (2 * h) - d_rescale[j]));
  }
  for (Index j = 0; j < w.size(); j += 11, ++probes) {
    MatrixD up = w, down = w;
    up.data()[j] += h;
    down.data()[j] -= h;
    worst = std::max(worst,
                     std::abs((loss(blocks, rescale, up) - loss(blocks, rescale, down)) / (2 * h) -
                              dw.data()[j]));
  }
  // Central differences in double with h = 1e-6: truncation about h^2 times the third
  // derivative and rounding about eps |loss| / h, each near 1e-10 for these O(1) values.
  EXPECT_GT(probes, 50);
  EXPECT_LT(worst, 1e-6);
  std::printf(
      "[ gradient ] BOFT backward_merge vs central differences: worst %.3g over %d probes\n", worst,
      probes);
}

// --- conventions --------------------------------------------------------------------------------

/// The test's own dense restatement of LyCORIS's stage: torch's
/// x.unflatten(0, (-1, 2, k)).transpose(1, 2).flatten(0, 2) as an index list (gathered position
/// -> source channel), written as the reshape it is, independent of oft::lycoris's formula.
std::vector<Index> torch_gather_order(Index out, Index stage, Index b) {
  const Index k = (Index{1} << stage) * (b / 2);
  std::vector<Index> order;
  for (Index c = 0; c < out / (2 * k); ++c)
    for (Index kk = 0; kk < k; ++kk)
      for (Index g = 0; g < 2; ++g) order.push_back(c * 2 * k + g * k + kk);
  return order;
}

enum class Variant {
  Lycoris,
  TransposedBlocks,
  NoPermutation,
  InversePermutation,
  ReversedStages,
  OutputSideT
};

/// The dense out x out matrix diag(r) T (T = T_{m-1} ... T_0) of module `op` in double, built from
/// permutation matrices, or one of the wrong conventions.
MatrixD dense_butterfly(const oft::lycoris::Boft<double>& op, Variant variant) {
  const Index out = op.out_features(), b = op.block_size();
  MatrixD total = MatrixD::Identity(out, out);
  for (Index i = 0; i < op.stages(); ++i) {
    const std::vector<Index> order = torch_gather_order(out, i, b);
    MatrixD p = MatrixD::Zero(out, out);  // (P v)_pos = v_order[pos]
    for (Index pos = 0; pos < out; ++pos) p(pos, order[size_t(pos)]) = 1.0;
    if (variant == Variant::NoPermutation) p = MatrixD::Identity(out, out);
    if (variant == Variant::InversePermutation) p.transposeInPlace();
    MatrixD blocks = MatrixD::Zero(out, out);
    for (Index d = 0; d < op.blocks(); ++d)
      blocks.block(d * b, d * b, b, b) = variant == Variant::TransposedBlocks
                                             ? MatrixD(op.block(i, d).transpose())
                                             : MatrixD(op.block(i, d));
    const MatrixD stage = p.transpose() * blocks * p;
    total = variant == Variant::ReversedStages ? MatrixD(total * stage) : MatrixD(stage * total);
  }
  if (variant == Variant::OutputSideT) total.transposeInPlace();  // Z T rather than Z T^T
  for (Index j = 0; j < out; ++j)
    if (op.rescaled()) total.row(j) *= op.rescale()[size_t(j)];
  return total;
}

// The correct dense reference lands within the bound; each wrong convention breaks it, by far, on
// the same fixtures (so the fixtures can tell the conventions apart): LyCORIS BOFT multiplies each
// gathered block by R (diag-OFT's R^T fails), gathers with its own butterfly order (none, or the
// scatter order, fails), applies stage 0 first, and rotates the weight's rows (W' = T W: a loader
// computing the output as Z T instead of Z T^T, i.e. merging T^T W, fails).
TEST(LycorisBoftConventions, OnlyLycorisOwnConventionMeetsTheBound) {
  const std::vector<std::pair<Variant, const char*>> variants{
      {Variant::Lycoris, "LyCORIS"},
      {Variant::TransposedBlocks, "R^T per block (diag-OFT's convention)"},
      {Variant::NoPermutation, "no butterfly permutation"},
      {Variant::InversePermutation, "the inverse permutation"},
      {Variant::ReversedStages, "the stages in reverse order"},
      {Variant::OutputSideT, "T^T W (R instead of R^T on the output side)"}};
  for (const auto& [variant, label] : variants) {
    double worst = 0.0;
    for (const std::string& name : boft_cases()) {
      const LycorisCase c = LycorisCase::load(name);
      const std::vector<double> multipliers = c.multipliers();
      for (const std::string& path : c.modules()) {
        const LycorisDiagOftModule& m = c.module(path);
        const Matrix w = c.flat(path + ".weight");
        const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
        for (std::size_t i = 0; i < multipliers.size(); ++i) {
          const oft::lycoris::Boft<double> op(
              m.stages, m.blocks, m.block_size, blocks.data(), double(m.alpha),
              std::vector<double>(m.rescale.begin(), m.rescale.end()), multipliers[i]);
          const MatrixD merged = dense_butterfly(op, variant) * w.cast<double>();
          const Difference d = compare(merged, c.flat(path + ".merged." + std::to_string(i)),
                                       boft_merge_tolerance(m.boft_op(multipliers[i]), w));
          worst = std::max(worst, d.worst_ratio);
        }
      }
    }
    std::printf("[ convention ] %-45s worst %.3g of the bound\n", label, worst);
    if (variant == Variant::Lycoris)
      EXPECT_LE(worst, 1.0) << label;
    else
      EXPECT_GT(worst, 100.0) << label;
  }
}

// A transposed R per block, through oft's own operator: B^T gives Q^T = -Q, R(-Q) = R^T; merging
// with it breaks the bound on every case (the fixtures' blocks are nonzero).
TEST(LycorisBoftConventions, TransposedBlocksThroughTheOperatorBreakTheBound) {
  for (const std::string& name : boft_cases()) {
    const LycorisCase c = LycorisCase::load(name);
    double worst = 0.0;
    for (const std::string& path : c.modules()) {
      const LycorisDiagOftModule& m = c.module(path);
      const Index b = m.block_size;
      std::vector<float> transposed(m.oft_blocks.size());
      for (Index g = 0; g < m.stages * m.blocks; ++g)
        for (Index p = 0; p < b; ++p)
          for (Index q = 0; q < b; ++q)
            transposed[size_t(g * b * b + p * b + q)] = m.oft_blocks[size_t(g * b * b + q * b + p)];
      const oft::lycoris::Boft<float> wrong(m.stages, m.blocks, b, transposed.data(),
                                            double(m.alpha), m.rescale, 1.0);
      const Matrix w = c.flat(path + ".weight");
      worst = std::max(worst, compare(wrong.merge(oft::view(w)), c.flat(path + ".merged.0"),
                                      boft_merge_tolerance(m.boft_op(), w))
                                  .worst_ratio);
    }
    EXPECT_GT(worst, 100.0) << name;
  }
}

// The operator's pieces: the permutation is the test's torch restatement, every stage block is
// orthogonal at s = 1, and merge of the identity is the dense reference.
TEST(LycorisBoft, PermutationBlocksAndDenseAgree) {
  for (Index b : {2, 4, 8})
    for (Index stage = 0; stage < 4; ++stage) {
      const Index out = (Index{1} << stage) * b * 2;
      const std::vector<Index> order = torch_gather_order(out, stage, b);
      for (Index p = 0; p < out; ++p)
        EXPECT_EQ(oft::lycoris::boft_source_channel(p, stage, b), order[size_t(p)])
            << b << " " << stage << " " << p;
    }
  const LycorisCase c = LycorisCase::load("lycoris_boft_rescaled_b4");
  const LycorisDiagOftModule& m = c.module("fc2");
  const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
  const oft::lycoris::Boft<double> op(m.stages, m.blocks, m.block_size, blocks.data(),
                                      double(m.alpha),
                                      std::vector<double>(m.rescale.begin(), m.rescale.end()), 0.5);
  EXPECT_TRUE(op.constraint().active);
  const MatrixD eye = MatrixD::Identity(op.out_features(), op.out_features());
  EXPECT_LE(
      (op.merge(oft::view(eye)) - dense_butterfly(op, Variant::Lycoris)).cwiseAbs().maxCoeff(),
      1e-14);
  oft::lycoris::Boft<double> unit(m.stages, m.blocks, m.block_size, blocks.data(), double(m.alpha));
  EXPECT_LE(unit.orthogonality_error(), 1e-14);
  unit.set_multiplier(0.5);
  EXPECT_GT(unit.orthogonality_error(), 1e-3);  // the blend is no rotation
}

// Bad input to the operator: one clear error naming the values.
TEST(LycorisBoft, RefusesShapesThatAreNoButterfly) {
  const std::vector<float> blocks(3 * 6 * 2 * 2, 0.1f);
  auto message = [&](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "accepted";
  };
  const std::string factor =
      message([&] { oft::lycoris::Boft<float>(3, 6, 2, blocks.data(), 0.0); });
  EXPECT_CONTAINS(factor, "N=6");
  EXPECT_CONTAINS(factor, "m=3");
  EXPECT_CONTAINS(message([&] { oft::lycoris::Boft<float>(1, 2, 3, blocks.data(), 0.0); }), "even");
  EXPECT_CONTAINS(message([&] {
                    oft::lycoris::Boft<float>(1, 2, 2, blocks.data(), 0.0, {1.0f, 1.0f});
                  }),
                  "rescale");
  const oft::lycoris::Boft<float> op(2, 2, 2, blocks.data(), 0.0);
  const Matrix w = Matrix::Ones(5, 3);
  const std::string base = message([&] { (void)op.merge(oft::view(w)); });
  EXPECT_CONTAINS(base, "5x3");
  EXPECT_CONTAINS(base, "out=4");
}

// oft inspect on a BOFT file: m, N, b, the constraint as LyCORIS decided it, rho and the
// orthogonality of the stage blocks.
TEST(LycorisBoft, InspectReportsStagesAndConstraint) {
  const LycorisCase c = LycorisCase::load("lycoris_boft_constrained_b8");
  const std::vector<oft::io::LycorisModuleReport> report = oft::io::inspect_lycoris(c.adapter);
  ASSERT_EQ(report.size(), 3u);
  for (const oft::io::LycorisModuleReport& r : report) {
    EXPECT_EQ(r.dialect, "lycoris-boft");
    EXPECT_GE(r.stages, 1);
    EXPECT_EQ(r.block_size, 8);
    EXPECT_GT(r.radius, 0.0);
    EXPECT_GT(r.rho, 0.0);
    EXPECT_LT(r.orthogonality, 1e-6);
    EXPECT_GT(r.blend_half, r.orthogonality);
  }
  const auto json = oft::io::to_json(report);
  EXPECT_EQ(json.at("dialect"), "lycoris-boft");
  EXPECT_EQ(json.at("modules").at(0).at("algo"), "boft");
  int active = 0;
  for (const auto& r : report) active += r.constraint_active ? 1 : 0;
  EXPECT_EQ(active, 2);  // make_fixtures.py: fc1 and proj.out bind, fc2 does not
}

// save() writes BOFT back as LyCORIS's saver did: the same shapes and values.
TEST(LycorisBoft, SaveRoundTrips) {
  oft_io_test::ScratchDir dir;
  const LycorisCase c = LycorisCase::load("lycoris_boft_rescaled_b4");
  c.adapter.save(dir / "again.safetensors");
  const oft::io::LycorisAdapter again = oft::io::LycorisAdapter::load(dir / "again.safetensors");
  ASSERT_EQ(again.modules.size(), c.adapter.modules.size());
  const oft::io::SafetensorsFile original =
      oft::io::SafetensorsFile::open(fixture("lycoris_boft_rescaled_b4.safetensors"));
  const oft::io::SafetensorsFile written =
      oft::io::SafetensorsFile::open(dir / "again.safetensors");
  for (const std::string& key : original.tensor_names()) {
    ASSERT_TRUE(written.contains(key)) << key;
    EXPECT_EQ(written.tensor(key).shape, original.tensor(key).shape) << key;
    EXPECT_EQ(written.tensor(key).copy_as<float>(), original.tensor(key).copy_as<float>()) << key;
  }
}

}  // namespace
}  // namespace oft_dialects_test
