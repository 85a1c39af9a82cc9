// OneTrainer / ComfyUI-OFTv2 adapters (io/onetrainer_adapter.hpp, onetrainer.hpp) against the
// float64 reference of make_onetrainer_fixtures.py, which is written from the math of
// OneTrainer's modules/module/oft_utils.py (github Nerogar/OneTrainer @ 23df383 and @ ad977de)
// and ComfyUI-OFTv2's node/oftv2_loader.py (github Koratahiu/ComfyUI-OFTv2 @ 29bdbae); and the
// dialect detection of io/dialect.hpp over every dialect's fixtures.
//
// Tolerance, per element, derived before comparing (u = 2^-53; both sides compute in double):
// the merge W + s W_beta (R^T - I) of row i and input block beta rounds the product to at most
// (b + 2) u (1 + |s|) ||w||_2 max(1, ||R||_F), w the row's block; R itself is a few products
// (Neumann: 3; CANS: 7 steps of 2 products and a square) of matrices of norm <= max(1, ||R||_F)
// after scaling, each adding at most b u of that: in all under 32 (b + 8) u (1 + |s|) ||w||_2
// max(1, ||R||_F) per side, and twice that between the two sides (64 (b + 8) u ...). The
// forwards add the GEMM over K inputs: K replaces b.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off.
// clang-format off
#include <oft/block_orthogonal.hpp>
#include <oft/norm_clipping.hpp>
#include <oft/io/dialect.hpp>
#include <oft/io/onetrainer_adapter.hpp>

#include <gtest/gtest.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "io_test_support.hpp"

namespace {

namespace fs = std::filesystem;
using oft::Index;
using MatrixD = oft::RowMatrix<double>;
using oft::io::OneTrainerAdapter;
using oft::io::OneTrainerModule;
using oft::onetrainer::Layer;

constexpr double kU = 0x1p-53;
const std::vector<double> kStrengths{1.0, 0.5, -0.75};

fs::path fixture(const std::string& name) { return fs::path(OFT_DIALECTS_FIXTURES_DIR) / name; }

struct Spec {
  std::string name;
  Layer layer;
  std::vector<Index> shape;  // the base weight's
};

// make_onetrainer_fixtures.py's module_specs().
const std::vector<Spec>& specs() {
  static const std::vector<Spec> s{
      {"lora_unet_down_blocks_0_attentions_0_proj_in", Layer::Linear, {16, 12}},
      {"lora_te1_text_model_encoder_layers_0_mlp_fc1", Layer::Linear, {10, 16}},
      {"lora_unet_mid_block_attentions_0_to_k", Layer::Linear, {5, 8}},
      {"lora_unet_conv_in", Layer::Conv2d, {6, 4, 3, 3}},
      {"lora_unet_down_blocks_1_downsamplers_0_conv", Layer::Conv2d, {4, 2, 1, 3}}};
  return s;
}

const std::vector<std::string>& cases() {
  static const std::vector<std::string> c{"plain", "scaled", "clipped", "cans", "all"};
  return c;
}

struct Case {
  OneTrainerAdapter adapter;
  oft::io::SafetensorsFile expected;
  static Case load(const std::string& stem) {
    return {
        OneTrainerAdapter::load(fixture("onetrainer_" + stem + ".safetensors")),
        oft::io::SafetensorsFile::open(fixture("onetrainer_" + stem + "_expected.safetensors"))};
  }
  std::vector<double> values(const std::string& key) const {
    return expected.tensor(key).copy_as<double>();
  }
  // Any rank as [dim 0, the rest].
  MatrixD flat(const std::string& key) const {
    const oft::io::TensorView t = expected.tensor(key);
    const auto rows = static_cast<Index>(t.shape.at(0));
    const std::vector<double> v = t.copy_as<double>();
    MatrixD m(rows, static_cast<Index>(v.size()) / rows);
    std::copy(v.begin(), v.end(), m.data());
    return m;
  }
};

double max_rotation_norm(const std::vector<oft::SquareMatrix<double>>& rot) {
  double n = 1.0;
  for (const auto& r : rot) n = std::max(n, r.norm());
  return n;
}

// The worst |got - want| / bound over the merge, the bound per element as derived above.
double merge_ratio(const MatrixD& got, const MatrixD& want, const MatrixD& w, Index b, double s,
                   double r_norm) {
  EXPECT_EQ(got.rows(), want.rows());
  EXPECT_EQ(got.cols(), want.cols());
  double worst = 0.0;
  for (Index i = 0; i < w.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) {
      const double wn = w.row(i).segment((j / b) * b, b).norm();
      const double bound =
          64.0 * static_cast<double>(b + 8) * kU * (1.0 + std::abs(s)) * wn * r_norm;
      worst = std::max(worst, std::abs(got(i, j) - want(i, j)) / bound);
    }
  return worst;
}

TEST(OneTrainerAdapter, ReadsKeysAndFlags) {
  for (const std::string& c : cases()) {
    const Case k = Case::load(c);
    ASSERT_EQ(k.adapter.modules.size(), specs().size()) << c;
    for (const Spec& spec : specs()) {
      const OneTrainerModule& m = k.adapter.module(spec.name);
      EXPECT_EQ(m.flags.scaled, c == "scaled" || c == "all") << c << " " << spec.name;
      EXPECT_EQ(m.flags.clipped, c == "clipped" || c == "all") << c;
      EXPECT_EQ(m.flags.cans, c == "cans" || c == "all") << c;
      if (m.flags.clipped) {
        EXPECT_EQ(m.flags.clip, static_cast<double>(c == "all" ? 0.3f : 0.5f));
      }
      EXPECT_EQ(m.dtype, oft::io::Dtype::F32);
    }
    EXPECT_EQ(k.adapter.module("lora_unet_mid_block_attentions_0_to_k").rows, 1);  // shared block
    EXPECT_EQ(k.adapter.module("lora_unet_conv_in").block_size, 6);
  }
}

// Every case, module and strength: the merge equals the reference's, the clipped ones with the
// reference's power-iteration start vectors (and, at s = 1, with the exact spectral norm).
TEST(OneTrainerAdapter, MergeMatchesReference) {
  double worst = 0.0;
  int compared = 0;
  for (const std::string& c : cases()) {
    const Case k = Case::load(c);
    for (const Spec& spec : specs()) {
      const OneTrainerModule& m = k.adapter.module(spec.name);
      const MatrixD w = k.flat(spec.name + ".weight");
      const std::vector<double> starts = k.values(spec.name + ".clip_start");
      const double r_norm = max_rotation_norm(m.rotations(starts.data()));
      for (std::size_t i = 0; i < kStrengths.size(); ++i) {
        const MatrixD got =
            OneTrainerAdapter::merge(m, oft::view(w), spec.layer, kStrengths[i], starts.data());
        const double ratio = merge_ratio(got, k.flat(spec.name + ".merged." + std::to_string(i)), w,
                                         m.block_size, kStrengths[i], r_norm);
        EXPECT_LE(ratio, 1.0) << c << " " << spec.name << " s=" << kStrengths[i];
        worst = std::max(worst, ratio);
        ++compared;
      }
      if (!m.flags.clipped) continue;
      const MatrixD exact = OneTrainerAdapter::merge(m, oft::view(w), spec.layer, 1.0);
      const double ratio = merge_ratio(exact, k.flat(spec.name + ".merged_exact"), w, m.block_size,
                                       1.0, max_rotation_norm(m.rotations()));
      EXPECT_LE(ratio, 1.0) << c << " " << spec.name << " exact spectral norm";
      worst = std::max(worst, ratio);
      ++compared;
    }
  }
  EXPECT_EQ(compared, 5 * 5 * 3 + 2 * 5);
  std::printf("OneTrainer merges: %d compared, worst %.3g of the bound\n", compared, worst);
}

// The power iteration's estimate is what makes a clipped file's merge differ from load to load:
// on these fixtures the two clippings differ far beyond the bound (so the exact path is not the
// estimate in disguise), and the estimate never exceeds the exact norm.
TEST(OneTrainerAdapter, PowerIterationIsNotTheExactNorm) {
  const Case k = Case::load("clipped");
  double largest = 0.0;
  for (const Spec& spec : specs()) {
    const OneTrainerModule& m = k.adapter.module(spec.name);
    const std::vector<double> starts = k.values(spec.name + ".clip_start");
    const Index packed = m.block_size * (m.block_size - 1) / 2;
    for (Index i = 0; i < m.rows; ++i) {
      const auto q = oft::onetrainer::skew_block(m.theta.data() + i * packed, m.block_size);
      const double estimate =
          oft::onetrainer::power_iteration_sigma(q, starts.data() + i * m.block_size);
      EXPECT_LE(estimate, oft::detail::skew_spectral_norm(q) * (1 + 1e-14))
          << spec.name << " block " << i;
    }
    largest =
        std::max(largest, (k.flat(spec.name + ".merged.0") - k.flat(spec.name + ".merged_exact"))
                              .cwiseAbs()
                              .maxCoeff());
  }
  EXPECT_GT(largest, 1e-3);
}

// OneTrainer's own forwards: Linear rotates the input (x -> x R per block) and then applies W;
// Conv2d convolves with W R. Computed here from oft's R (not from the merge), they equal the
// reference's: this is what pins R's orientation on each layer kind.
TEST(OneTrainerAdapter, ForwardMatchesReference) {
  for (const std::string& c : cases()) {
    const Case k = Case::load(c);
    for (const Spec& spec : specs()) {
      const OneTrainerModule& m = k.adapter.module(spec.name);
      const std::vector<double> starts = k.values(spec.name + ".clip_start");
      const auto rot = m.rotations(starts.data());
      const double r_norm = max_rotation_norm(rot);
      const Index b = m.block_size;
      const MatrixD w = k.flat(spec.name + ".weight");
      const std::vector<double> want = k.values(spec.name + ".forward");
      const Index in = w.cols();
      if (spec.layer == Layer::Linear) {
        const MatrixD x = k.flat(spec.name + ".x");
        MatrixD xr(x.rows(), in);
        for (Index j = 0; j < in / b; ++j)
          xr.middleCols(j * b, b) =
              x.middleCols(j * b, b) * rot[rot.size() == 1 ? 0 : static_cast<std::size_t>(j)];
        const MatrixD z = xr * w.transpose();
        for (Index t = 0; t < z.rows(); ++t)
          for (Index o = 0; o < z.cols(); ++o) {
            const double bound = 64.0 * static_cast<double>(in + b + 8) * kU * x.row(t).norm() *
                                 w.row(o).norm() * r_norm;
            EXPECT_NEAR(z(t, o), want[static_cast<std::size_t>(t * z.cols() + o)], bound)
                << c << " " << spec.name;
          }
        continue;
      }
      MatrixD wr(w.rows(), in);  // W R per block: OneTrainer's "ork,rkc->orc"
      for (Index j = 0; j < in / b; ++j)
        wr.middleCols(j * b, b) = w.middleCols(j * b, b) * rot[static_cast<std::size_t>(j)];
      const Index channels = spec.shape[1], kh = spec.shape[2], kw = spec.shape[3];
      const std::vector<double> x = k.values(spec.name + ".x");  // [2, channels, 7, 6], padding 1
      const Index batch = 2, height = 7, width = 6, oh = height + 2 - kh + 1,
                  ow = width + 2 - kw + 1;
      ASSERT_EQ(want.size(), static_cast<std::size_t>(batch * w.rows() * oh * ow));
      const double x_max = std::abs(*std::max_element(
          x.begin(), x.end(), [](double a, double z) { return std::abs(a) < std::abs(z); }));
      for (Index n = 0; n < batch; ++n)
        for (Index o = 0; o < w.rows(); ++o)
          for (Index y = 0; y < oh; ++y)
            for (Index xx = 0; xx < ow; ++xx) {
              double sum = 0.0;
              for (Index ch = 0; ch < channels; ++ch)
                for (Index dy = 0; dy < kh; ++dy)
                  for (Index dx = 0; dx < kw; ++dx) {
                    const Index iy = y + dy - 1, ix = xx + dx - 1;
                    if (iy < 0 || iy >= height || ix < 0 || ix >= width) continue;
                    sum += wr(o, (ch * kh + dy) * kw + dx) *
                           x[static_cast<std::size_t>(((n * channels + ch) * height + iy) * width +
                                                      ix)];
                  }
              const double bound = 64.0 * static_cast<double>(in + b + 8) * kU * x_max *
                                   w.row(o).lpNorm<1>() * r_norm;
              EXPECT_NEAR(sum,
                          want[static_cast<std::size_t>(((n * w.rows() + o) * oh + y) * ow + xx)],
                          bound)
                  << c << " " << spec.name;
            }
    }
  }
}

// A transposed R (the generator negated: R_5(-Q) = R_5(Q)^T, and CANS's polar factor transposes
// too), the other layer kind's side, or a flag dropped would each be caught: every variant
// breaks the bound by orders of magnitude somewhere.
TEST(OneTrainerAdapter, CatchesTransposedRWrongSideAndDroppedFlags) {
  for (const std::string& c : cases()) {
    const Case k = Case::load(c);
    for (const Spec& spec : specs()) {
      const OneTrainerModule& m = k.adapter.module(spec.name);
      const MatrixD w = k.flat(spec.name + ".weight");
      const MatrixD want = k.flat(spec.name + ".merged.0");
      const std::vector<double> starts = k.values(spec.name + ".clip_start");
      const double r_norm = max_rotation_norm(m.rotations(starts.data()));
      auto ratio = [&](const OneTrainerModule& variant, Layer layer) {
        return merge_ratio(
            OneTrainerAdapter::merge(variant, oft::view(w), layer, 1.0, starts.data()), want, w,
            m.block_size, 1.0, r_norm);
      };
      OneTrainerModule negated = m;
      for (double& v : negated.theta) v = -v;
      EXPECT_GT(ratio(negated, spec.layer), 1e6) << c << " " << spec.name;
      EXPECT_GT(ratio(m, spec.layer == Layer::Linear ? Layer::Conv2d : Layer::Linear), 1e6)
          << c << " " << spec.name;
      for (int flag = 0; flag < 3; ++flag) {
        OneTrainerModule dropped = m;
        bool& on = flag == 0   ? dropped.flags.scaled
                   : flag == 1 ? dropped.flags.clipped
                               : dropped.flags.cans;
        if (!on) continue;
        on = false;
        // A clip that binds on no block changes nothing: only where it binds must dropping it show.
        if (flag == 1 && ratio(dropped, spec.layer) <= 1.0) {
          const Index packed = m.block_size * (m.block_size - 1) / 2;
          const double scale =
              m.flags.scaled ? 2.0 * std::sqrt(static_cast<double>(m.block_size - 1)) : 1.0;
          for (Index i = 0; i < m.rows; ++i)
            EXPECT_LE(oft::onetrainer::power_iteration_sigma(
                          oft::onetrainer::skew_block(m.theta.data() + i * packed, m.block_size),
                          starts.data() + i * m.block_size) /
                          scale,
                      m.flags.clip)
                << c << " " << spec.name;
          continue;
        }
        EXPECT_GT(ratio(dropped, spec.layer), 1e6) << c << " " << spec.name << " flag " << flag;
      }
    }
  }
}

// CANS's two orders: OneTrainer's own forward (the steps on (I + Q)^2) against the reference, and
// on the "cans" fixture (blocks with ||Q||_2 up to about 8, where 7 steps have not converged)
// the loader's R is neither OneTrainer's nor exact Cayley: a loader computing either would be
// caught, by orders of magnitude over the bound.
TEST(OneTrainerAdapter, CansOrdersAreDistinctAndMatchReference) {
  for (const std::string c : {"cans", "all"}) {
    const Case k = Case::load(c);
    double from_trainer = 0.0, from_cayley = 0.0;
    for (const Spec& spec : specs()) {
      OneTrainerModule m = k.adapter.module(spec.name);
      const MatrixD w = k.flat(spec.name + ".weight");
      const std::vector<double> starts = k.values(spec.name + ".clip_start");
      const MatrixD loader =
          OneTrainerAdapter::merge(m, oft::view(w), spec.layer, 1.0, starts.data());
      m.flags.cans_order = oft::onetrainer::CansOrder::SquareFirst;
      const double r_norm = max_rotation_norm(m.rotations(starts.data()));
      const MatrixD trainer =
          OneTrainerAdapter::merge(m, oft::view(w), spec.layer, 1.0, starts.data());
      EXPECT_LE(
          merge_ratio(trainer, k.flat(spec.name + ".merged_trainer"), w, m.block_size, 1.0, r_norm),
          1.0)
          << c << " " << spec.name;
      from_trainer =
          std::max(from_trainer, merge_ratio(loader, trainer, w, m.block_size, 1.0, r_norm));
      // Exact Cayley of the same (scaled, clipped) Q, by the Neumann-free route.
      std::vector<oft::SquareMatrix<double>> cayley;
      const Index b = m.block_size, packed = b * (b - 1) / 2;
      for (Index i = 0; i < m.rows; ++i) {
        oft::SquareMatrix<double> q = oft::onetrainer::skew_block(m.theta.data() + i * packed, b);
        if (m.flags.scaled) q /= 2.0 * std::sqrt(static_cast<double>(b - 1));
        if (m.flags.clipped) {
          const double sigma = oft::onetrainer::power_iteration_sigma(q, starts.data() + i * b);
          q *= m.flags.clip / std::max(sigma, m.flags.clip);
        }
        const oft::SquareMatrix<double> eye = oft::SquareMatrix<double>::Identity(b, b);
        cayley.push_back((eye + q) * (eye - q).inverse());
      }
      from_cayley =
          std::max(from_cayley,
                   merge_ratio(loader,
                               oft::onetrainer::merge(oft::ConstMatrixView<double>(oft::view(w)),
                                                      cayley, spec.layer),
                               w, m.block_size, 1.0, r_norm));
    }
    std::printf("%s: loader vs OneTrainer's CANS order %.3g, vs exact Cayley %.3g of the bound\n",
                c.c_str(), from_trainer, from_cayley);
    if (c == "cans") {
      EXPECT_GT(from_trainer, 1e6);
      EXPECT_GT(from_cayley, 1e3);
    }
  }
}

// Training through CANS: cans_rotation_vjp, chained through the packing, against torch autograd
// of the reference (||G||_inf detached, as OneTrainer's code does) in both orders, on the cans
// fixture (no scaled_oft there: its chain rule is the constant factor 1 / (2 sqrt(b - 1))).
// Bound, per entry of dtheta: the adjoint is a linear map of C applied as 7 steps of 6 products
// and a final product, each rounding at most (b + 2) u of ||bar||_F ||X_i||_F^2; a step
// multiplies ||bar||_F by at most N_i = |c1_i| + 3 |c3_i| ||X_i||_F^2, the square by
// 2 max(||H||_F, ||A||_F), the scale by 1 / ||G||_inf. So each side is within
// 8 (b + 2) u P ||C||_F / ||G||_inf of the exact adjoint, P the product of max(1, N_i) and the
// square's factor, and the two within 64 (b + 8) u P ||C||_F / ||G||_inf. A worst-case product
// of norms, so loose; the test also shows that the likely mistakes break it by > 1e3.
double cans_gradient_bound(const oft::SquareMatrix<double>& q, oft::onetrainer::CansOrder order,
                           Index b, double c_norm) {
  oft::SquareMatrix<double> a = q;
  a.diagonal().array() += 1.0;
  const oft::SquareMatrix<double> g =
      order == oft::onetrainer::CansOrder::SquareFirst ? oft::SquareMatrix<double>(a * a) : a;
  const double norm = std::max(g.cwiseAbs().rowwise().sum().maxCoeff(), 1e-7);
  oft::SquareMatrix<double> x = g / norm;
  double lo = 1.0 / norm, hi = 1.0, product = 1.0;
  for (int i = 0; i < oft::onetrainer::kCansSteps; ++i) {
    const double e2 = (lo * lo + lo * hi + hi * hi) / 3.0, k = 2.0 * std::pow(e2, 1.5);
    const double l = lo * hi * (lo + hi), alpha = 6.0 / (k + l);
    const double xn = x.norm();
    product *= std::max(1.0, alpha * e2 + alpha * xn * xn);  // |c1| + 3 |c3| ||X||_F^2
    x = (alpha * e2) * x - (alpha / 3.0) * (x * x.transpose() * x);
    const double e = (k - l) / (k + l);
    lo = 1.0 - e;
    hi = 1.0 + e;
  }
  product *= 2.0 * std::max(x.norm(), a.norm());
  return 64.0 * static_cast<double>(b + 8) * kU * product * c_norm / norm;
}

TEST(OneTrainerAdapter, CansGradientMatchesAutograd) {
  using oft::onetrainer::CansOrder;
  const Case k = Case::load("cans");
  double worst = 0.0, largest_bound = 0.0, smallest_ref = 1e300, largest_ref = 0.0;
  double caught_order = 0.0, caught_side = 0.0;
  int compared = 0;
  for (const Spec& spec : specs()) {
    const OneTrainerModule& m = k.adapter.module(spec.name);
    const Index b = m.block_size, packed = b * (b - 1) / 2;
    const std::vector<double> c = k.values(spec.name + ".cans_grad_c");
    for (const CansOrder order : {CansOrder::SquareAfter, CansOrder::SquareFirst}) {
      const std::vector<double> want = k.values(
          spec.name + ".cans_grad_theta." + (order == CansOrder::SquareAfter ? "after" : "first"));
      for (Index i = 0; i < m.rows; ++i) {
        const oft::SquareMatrix<double> q =
            oft::onetrainer::skew_block(m.theta.data() + i * packed, b);
        const oft::SquareMatrix<double> r_bar =
            Eigen::Map<const MatrixD>(c.data() + i * b * b, b, b);  // C is row-major [b, b]
        const oft::SquareMatrix<double> dq = oft::onetrainer::cans_rotation_vjp(q, order, r_bar);
        const double bound = cans_gradient_bound(q, order, b, r_bar.norm());
        // What the bound must catch: the other order's adjoint, or dL/dR taken transposed.
        const CansOrder other =
            order == CansOrder::SquareAfter ? CansOrder::SquareFirst : CansOrder::SquareAfter;
        const oft::SquareMatrix<double> wrong_order =
            oft::onetrainer::cans_rotation_vjp(q, other, r_bar);
        const oft::SquareMatrix<double> wrong_side = oft::onetrainer::cans_rotation_vjp(
            q, order, oft::SquareMatrix<double>(r_bar.transpose()));
        Index at = 0;
        for (Index p = 0; p < b; ++p)
          for (Index col = p + 1; col < b; ++col, ++at) {
            const double got = dq(p, col) - dq(col, p);
            const double ref = want[static_cast<std::size_t>(i * packed + at)];
            EXPECT_NEAR(got, ref, bound)
                << spec.name << " block " << i << " (" << p << ", " << col << ")";
            worst = std::max(worst, std::abs(got - ref) / bound);
            caught_order = std::max(
                caught_order, std::abs(wrong_order(p, col) - wrong_order(col, p) - ref) / bound);
            caught_side = std::max(caught_side,
                                   std::abs(wrong_side(p, col) - wrong_side(col, p) - ref) / bound);
            largest_bound = std::max(largest_bound, bound);
            smallest_ref = std::min(smallest_ref, std::abs(ref));
            largest_ref = std::max(largest_ref, std::abs(ref));
            ++compared;
          }
      }
    }
  }
  std::printf(
      "CANS gradients: %d entries, worst %.3g of the bound; bounds up to %.3g, |dtheta| "
      "from %.3g to %.3g\n",
      compared, worst, largest_bound, smallest_ref, largest_ref);
  EXPECT_EQ(compared, 2 * (3 * 6 + 2 * 28 + 1 * 6 + 6 * 15 + 2 * 3));
  std::printf("  the other order's adjoint: %.3g of the bound; dL/dR transposed: %.3g\n",
              caught_order, caught_side);
  EXPECT_GT(caught_order, 1e3);
  EXPECT_GT(caught_side, 1e3);
}

// Without cans_oft the loader's map, with the exact spectral norm, is oft's own operator:
// BlockOrthogonal<Clipped<CayleyNeumann{3}, SpectralNorm>> (plain CayleyNeumann{3} without the
// clip) on theta / (2 sqrt(b - 1)) (scaled_oft) or theta. So training through such a file from
// C++ is that operator, whose backward the core tests check; this pins the equality, block by
// block, within the bound of the merge test (64 (b + 8) u max(1, ||R||_F)).
TEST(OneTrainerAdapter, NonCansMapIsOftsClippedNeumannOperator) {
  int compared = 0;
  for (const std::string c : {"plain", "scaled", "clipped"}) {
    const Case k = Case::load(c);
    for (const OneTrainerModule& m : k.adapter.modules) {
      const Index b = m.block_size, packed = b * (b - 1) / 2;
      const auto spec = oft::BlockSpec::from_features(m.rows * b, b);
      oft::Generators<double> theta(spec);
      const double scale = m.flags.scaled ? 2.0 * std::sqrt(static_cast<double>(b - 1)) : 1.0;
      for (Index i = 0; i < m.rows; ++i)
        for (Index j = 0; j < packed; ++j)
          theta.row(i)[j] = m.theta[static_cast<std::size_t>(i * packed + j)] / scale;
      std::vector<oft::RowMatrix<double>> blocks;
      if (m.flags.clipped) {
        using Policy = oft::Clipped<oft::CayleyNeumann, oft::SpectralNorm>;
        oft::BlockOrthogonal<double, Policy> op(spec, Policy(oft::CayleyNeumann{3}, m.flags.clip));
        op.set_generators(theta.view());
        for (Index i = 0; i < m.rows; ++i) blocks.push_back(op.block(i));
      } else {
        oft::BlockOrthogonal<double, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{3});
        op.set_generators(theta.view());
        for (Index i = 0; i < m.rows; ++i) blocks.push_back(op.block(i));
      }
      const auto rot = m.rotations();
      for (Index i = 0; i < m.rows; ++i) {
        const auto& r = rot[static_cast<std::size_t>(i)];
        const double bound = 64.0 * static_cast<double>(b + 8) * kU * std::max(1.0, r.norm());
        EXPECT_LE((blocks[static_cast<std::size_t>(i)] - r).cwiseAbs().maxCoeff(), bound)
            << c << " " << m.name << " block " << i;
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, 3 * (3 + 2 + 1 + 6 + 2));
}

TEST(OneTrainerAdapter, SaveRoundTrip) {
  oft_io_test::ScratchDir dir;
  for (const std::string& c : cases()) {
    const Case k = Case::load(c);
    const fs::path out = dir / (c + ".safetensors");
    k.adapter.save(out);
    const OneTrainerAdapter back = OneTrainerAdapter::load(out);
    ASSERT_EQ(back.modules.size(), k.adapter.modules.size());
    for (std::size_t i = 0; i < back.modules.size(); ++i) {
      const OneTrainerModule &a = k.adapter.modules[i], &b = back.modules[i];
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.rows, b.rows);
      EXPECT_EQ(a.block_size, b.block_size);
      EXPECT_EQ(a.theta, b.theta);  // float32 values, exactly
      EXPECT_EQ(a.flags.scaled, b.flags.scaled);
      EXPECT_EQ(a.flags.clipped, b.flags.clipped);
      EXPECT_EQ(a.flags.clip, b.flags.clip);
      EXPECT_EQ(a.flags.cans, b.flags.cans);
    }
    const auto file = oft::io::SafetensorsFile::open(out);
    const std::string name = specs().front().name;
    if (c == "all") {
      EXPECT_EQ(file.tensor(name + ".oft_R.scaled_oft").dtype, oft::io::Dtype::BOOL);
      EXPECT_EQ(file.tensor(name + ".oft_R.cans_oft").dtype, oft::io::Dtype::BOOL);
      EXPECT_EQ(file.tensor(name + ".oft_R.clipped_oft").dtype, oft::io::Dtype::F32);
    }
  }
}

// Writes a file of the given tensors (float scalars/arrays, or BOOL flags) and expects read()
// to refuse it with a message containing every part.
struct Forged {
  oft::io::SafetensorsWriter writer;
  std::vector<std::vector<float>> keep;
  Forged& floats(const std::string& key, std::vector<std::uint64_t> shape, std::vector<float> v) {
    keep.push_back(std::move(v));
    writer.add(key, std::move(shape), keep.back());
    return *this;
  }
  Forged& flag(const std::string& key, std::uint8_t value = 1) {
    static const std::uint8_t values[2] = {0, 1};
    writer.add(key, oft::io::Dtype::BOOL, {}, &values[value ? 1 : 0], 1);
    return *this;
  }
};

void expect_refused(Forged& f, const std::vector<std::string>& parts) {
  oft_io_test::ScratchDir dir;
  const fs::path path = dir / "forged.safetensors";
  f.writer.write(path);
  try {
    (void)OneTrainerAdapter::load(path);
    ADD_FAILURE() << "not refused: " << parts.front();
  } catch (const std::invalid_argument& e) {
    for (const std::string& part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << e.what() << "\nlacks: " << part;
  }
}

TEST(OneTrainerAdapter, RefusesDoraAndMalformedFiles) {
  const std::vector<float> six(6, 0.1f);
  for (const char* dora : {".dora_scale", ".initial_norm", ".dora_log_multiplier"}) {
    Forged f;
    f.floats("m.oft_R.weight", {2, 6}, std::vector<float>(12, 0.1f))
        .floats(std::string("m") + dora, {8}, std::vector<float>(8, 1));
    expect_refused(f, {std::string("m") + dora, "DoRA", "[8]"});
  }
  {
    Forged f;
    f.floats("m.oft_R.weight", {1, 6}, six)
        .floats("m.lora_up.weight", {4, 2}, std::vector<float>(8, 0));
    expect_refused(f, {"m.lora_up.weight", "[4, 2]", "belongs to no OneTrainer OFT module"});
  }
  {
    Forged f;
    f.floats("m.oft_R.weight", {1, 6}, six).flag("n.oft_R.cans_oft");
    expect_refused(f, {"n.oft_R.cans_oft", "n.oft_R.weight"});
  }
  {  // OneTrainer's KOHYA format would flatten the weight's path but not the cans flag's
    Forged f;
    f.floats("lora_unet_mid_block_to_k.oft_R.weight", {1, 6}, six)
        .flag("lora_unet.mid_block.to_k.oft_R.cans_oft");
    expect_refused(f, {"lora_unet.mid_block.to_k.oft_R.cans_oft", "has no",
                       "lora_unet.mid_block.to_k.oft_R.weight"});
  }
  {
    Forged f;
    f.floats("m.oft_R.weight", {2, 5}, std::vector<float>(10, 0));
    expect_refused(f, {"m.oft_R.weight", "[2, 5]", "b(b-1)/2"});
  }
  {
    Forged f;
    f.floats("m.oft_R.weight", {1, 2, 3}, six);
    expect_refused(f, {"m.oft_R.weight", "[1, 2, 3]"});
  }
  {
    Forged f;
    f.floats("m.oft_R.weight", {1, 6}, six).flag("m.oft_R.scaled_oft", 0);
    expect_refused(f, {"m.oft_R.scaled_oft", "presence"});
  }
  for (const float clip : {0.0f, -1.0f, std::nanf("")}) {
    Forged f;
    f.floats("m.oft_R.weight", {1, 6}, six).floats("m.oft_R.clipped_oft", {}, {clip});
    expect_refused(f, {"m.oft_R.clipped_oft", "positive"});
  }
  {
    Forged f;
    f.floats("m.oft_R.weight", {1, 6}, six).floats("m.oft_R.clipped_oft", {2}, {0.5f, 0.5f});
    expect_refused(f, {"m.oft_R.clipped_oft", "[2]", "one value"});
  }
  {
    std::vector<float> bad = six;
    bad[3] = std::numeric_limits<float>::infinity();
    Forged f;
    f.floats("m.oft_R.weight", {1, 6}, bad);
    expect_refused(f, {"m.oft_R.weight", "inf"});
  }
  {
    Forged f;
    f.floats("m.alpha", {}, {1.0f});
    expect_refused(f, {"no OneTrainer OFT module", "m.alpha"});
  }
}

TEST(OneTrainerAdapter, RefusesAWeightOfAnotherShapeAndWritesNothingMalformed) {
  const Case k = Case::load("plain");
  const OneTrainerModule& m =
      k.adapter.module("lora_unet_down_blocks_0_attentions_0_proj_in");  // 3 blocks of 4
  const MatrixD w = MatrixD::Ones(16, 16);
  try {
    (void)OneTrainerAdapter::merge(m, oft::view(w), Layer::Linear);
    ADD_FAILURE() << "not refused";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("16x16"), std::string::npos) << what;
    EXPECT_NE(what.find("[3, 6]"), std::string::npos) << what;
  }
  // A shared block fits any multiple of b, and nothing else.
  const OneTrainerModule& shared = k.adapter.module("lora_unet_mid_block_attentions_0_to_k");
  EXPECT_NO_THROW((void)OneTrainerAdapter::merge(shared, oft::view(MatrixD(MatrixD::Ones(2, 12))),
                                                 Layer::Linear));
  EXPECT_THROW((void)OneTrainerAdapter::merge(shared, oft::view(MatrixD(MatrixD::Ones(2, 10))),
                                              Layer::Linear),
               std::invalid_argument);

  oft_io_test::ScratchDir dir;
  OneTrainerAdapter bad = k.adapter;
  bad.modules.back().theta.pop_back();
  EXPECT_THROW(bad.save(dir / "bad.safetensors"), std::invalid_argument);
  bad = k.adapter;
  bad.modules.front().flags.clipped = true;
  bad.modules.front().flags.clip = -0.5;
  EXPECT_THROW(bad.save(dir / "bad.safetensors"), std::invalid_argument);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(OneTrainerAdapter, InspectReportsFlagsClipAndOrthogonality) {
  const auto report = oft::io::inspect_onetrainer(Case::load("all").adapter);
  ASSERT_EQ(report.size(), specs().size());
  for (const auto& r : report) {
    EXPECT_TRUE(r.scaled && r.clipped && r.cans) << r.name;
    EXPECT_LT(r.orthogonality_error, 1e-6) << r.name;  // CANS, 7 steps: near orthogonal
  }
  const auto plain = oft::io::inspect_onetrainer(Case::load("clipped").adapter);
  Index clipped = 0;
  for (const auto& r : plain) clipped += r.clipped_blocks;
  EXPECT_GT(clipped, 0);
  const auto json = oft::io::to_json(plain);
  EXPECT_EQ(json.at("dialect"), "onetrainer-oft");
  EXPECT_EQ(json.at("modules").at(0).at("clipped_oft"), static_cast<double>(0.5f));
}

// A PEFT adapter read as OneTrainer's (the same oft_R.weight): with PEFT >= 0.18's 5-term
// Neumann branch the loader computes PEFT's R (to rounding); PEFT's exact branch trained R(Q)^T,
// which the loader turns into about the inverse; PEFT < 0.18's 5-term series and a 2-term one
// are other R's. inspect_onetrainer measures each against PEFT's own policy.
TEST(OneTrainerAdapter, InspectMeasuresAPeftAdapterReadAsOneTrainer) {
  const fs::path peft =
      fs::path(OFT_DIALECTS_FIXTURES_DIR) / ".." / ".." / "peft" / "fixtures" / "adapters";
  auto change = [&](const std::string& name) {
    const auto config = oft::io::PeftOftAdapter::load(peft / name).config;
    const auto report = oft::io::inspect_onetrainer(
        OneTrainerAdapter::load(peft / name / "adapter_model.safetensors"), &config);
    double worst = 0.0;
    for (const auto& r : report) {
      EXPECT_GE(r.peft_change, 0.0) << name << " " << r.name;
      worst = std::max(worst, r.peft_change);
    }
    return std::make_pair(worst, report.front().note);
  };
  const auto same = change("neumann_t5");
  EXPECT_LT(same.first, 1e-12);  // double rounding of two evaluations of one polynomial
  const auto exact = change("exact");
  EXPECT_GT(exact.first, 0.1);
  EXPECT_NE(exact.second.find("inverse"), std::string::npos) << exact.second;
  EXPECT_GT(change("legacy_t5").first, 1e-3);
  EXPECT_GT(change("neumann_t2").first, 1e-3);
  std::printf("PEFT read as OneTrainer: max ||R_loaded - R_PEFT||_F %.3g (T = 5), %.3g (exact)\n",
              same.first, exact.first);
}

// ---- dialect detection (io/dialect.hpp) ----

TEST(Dialect, DetectsEachDialectByItsKeys) {
  using oft::io::detect_dialect;
  using oft::io::Dialect;
  for (const std::string& c : cases())
    EXPECT_EQ(detect_dialect(fixture("onetrainer_" + c + ".safetensors")), Dialect::OneTrainer)
        << c;
  EXPECT_EQ(detect_dialect(fixture("lycoris_plain_b4.safetensors")), Dialect::Lycoris);
  EXPECT_EQ(detect_dialect(fixture("lycoris_boft_plain_b4.safetensors")), Dialect::Lycoris);
  EXPECT_EQ(detect_dialect(fixture("kohya_k4.safetensors")), Dialect::Kohya);
  EXPECT_EQ(detect_dialect(fixture("kohya_flux.safetensors")), Dialect::Kohya);
  const fs::path peft =
      fs::path(OFT_DIALECTS_FIXTURES_DIR) / ".." / ".." / "peft" / "fixtures" / "adapters";
  const fs::path families =
      fs::path(OFT_DIALECTS_FIXTURES_DIR) / ".." / ".." / "families" / "fixtures" / "adapters";
  EXPECT_EQ(detect_dialect(peft / "neumann_t5"), Dialect::PeftOft);
  EXPECT_EQ(detect_dialect(peft / "embedding"), Dialect::PeftOft);
  EXPECT_EQ(detect_dialect(families / "boft"), Dialect::PeftBoft);
  EXPECT_EQ(detect_dialect(families / "hra"), Dialect::PeftHra);
}

TEST(Dialect, RefusesFilesOfNoneOrTwoNamingTheKeys) {
  oft_io_test::ScratchDir dir;
  {
    Forged f;
    f.floats("lycoris_fc1.oft_blocks", {2, 2, 2}, std::vector<float>(8, 0))
        .floats("fc2.oft_R.weight", {1, 1}, {0});
    f.writer.write(dir / "two.safetensors");
    try {
      (void)oft::io::detect_dialect(dir / "two.safetensors");
      ADD_FAILURE() << "not refused";
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      for (const char* part :
           {"more than one", "lycoris", "lycoris_fc1.oft_blocks", "onetrainer", "fc2.oft_R.weight"})
        EXPECT_NE(what.find(part), std::string::npos) << what << "\nlacks: " << part;
    }
  }
  {
    Forged f;
    f.floats("fc1.lora_down.weight", {2, 2}, std::vector<float>(4, 0));
    f.writer.write(dir / "none.safetensors");
    try {
      (void)oft::io::detect_dialect(dir / "none.safetensors");
      ADD_FAILURE() << "not refused";
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("no OFT dialect"), std::string::npos) << what;
      EXPECT_NE(what.find("fc1.lora_down.weight"), std::string::npos) << what;
    }
  }
}

// --dialect: any non-PEFT name is taken as given (its reader judges the keys); a PEFT name must be
// a directory whose keys agree, since PEFT's own config decides how PEFT reads it.
TEST(Dialect, ResolvesAForcedDialect) {
  using oft::io::Dialect;
  using oft::io::resolve_dialect;
  const fs::path peft =
      fs::path(OFT_DIALECTS_FIXTURES_DIR) / ".." / ".." / "peft" / "fixtures" / "adapters";
  EXPECT_EQ(resolve_dialect(fixture("lycoris_plain_b4.safetensors"), Dialect::Kohya),
            Dialect::Kohya);
  EXPECT_EQ(resolve_dialect(fixture("lycoris_plain_b4.safetensors"), std::nullopt),
            Dialect::Lycoris);
  EXPECT_EQ(resolve_dialect(peft / "exact", Dialect::OneTrainer), Dialect::OneTrainer);
  EXPECT_EQ(resolve_dialect(peft / "exact", Dialect::PeftOft), Dialect::PeftOft);
  EXPECT_THROW((void)resolve_dialect(peft / "exact", Dialect::PeftBoft), std::invalid_argument);
  EXPECT_THROW((void)resolve_dialect(fixture("onetrainer_plain.safetensors"), Dialect::PeftOft),
               std::invalid_argument);
  // The forced reader then refuses what is not its own, naming the keys.
  EXPECT_THROW((void)oft::io::LycorisAdapter::load(fixture("onetrainer_plain.safetensors")),
               std::invalid_argument);
  EXPECT_THROW((void)OneTrainerAdapter::load(fixture("lycoris_plain_b4.safetensors")),
               std::invalid_argument);
}

TEST(Dialect, ParsesNamesAndRefusesUnknownOnes) {
  for (const oft::io::Dialect d : oft::io::kDialects)
    EXPECT_EQ(oft::io::parse_dialect(oft::io::dialect_name(d)), d);
  try {
    (void)oft::io::parse_dialect("comfy");
    ADD_FAILURE() << "not refused";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'comfy'"), std::string::npos) << what;
    EXPECT_NE(what.find("onetrainer"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

}  // namespace

namespace {

// Mutated files (one byte of the header or the data changed, or the file cut short), as
// test_lycoris_adapter.cpp does for the LyCORIS reader: detecting, reading, merging every module
// and inspecting either succeed or throw a documented exception (std::invalid_argument, of which
// format_error, or std::system_error), never anything else. Deterministic: a fixed seed.
TEST(OneTrainerAdapter, MutatedFilesFailCleanly) {
  oft_io_test::ScratchDir dir;
  std::uint64_t state = 31;
  const auto next = [&state] {  // splitmix64
    state += 0x9e3779b97f4a7c15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  int accepted = 0, refused = 0;
  for (const std::string name : {"onetrainer_all", "onetrainer_scaled"}) {
    const std::string original = oft_io_test::read_bytes(fixture(name + ".safetensors"));
    std::uint64_t header = 0;
    for (int i = 7; i >= 0; --i)
      header = (header << 8) | static_cast<unsigned char>(original[static_cast<std::size_t>(i)]);
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
        (void)oft::io::detect_dialect(path);
        const OneTrainerAdapter a = OneTrainerAdapter::load(path);
        for (const OneTrainerModule& m : a.modules) {
          const MatrixD w = MatrixD::Ones(3, m.rows * m.block_size);
          (void)OneTrainerAdapter::merge(m, oft::view(w), Layer::Linear, 0.5);
        }
        (void)oft::io::to_json(oft::io::inspect_onetrainer(a));
        ++accepted;
      } catch (const std::invalid_argument&) {
        ++refused;
      } catch (const std::system_error&) {
        ++refused;
      }
    }
  }
  std::printf("[ mutate ] 400 mutated OneTrainer files: %d read, %d refused cleanly\n", accepted,
              refused);
  EXPECT_EQ(accepted + refused, 400);
  EXPECT_GT(refused, 0);
  EXPECT_GT(accepted, 0);  // data bytes changed into other finite values still read
}

}  // namespace
