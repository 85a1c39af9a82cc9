/// bfloat16 activations on the CPU: X, dY, Y, dX in bfloat16 with a float operator.
///
/// The contract (docs/bf16.md): the kernels widen the bfloat16 inputs exactly, compute in float
/// exactly as the float path does, and round each output once to nearest even. So, on the same
/// (widened) inputs and with the same thread count,
///   Y_bf16 == round_bf16(Y_float) and dX_bf16 == round_bf16(dX_float), bit for bit, and
///   dtheta_bf16 == dtheta_float, bit for bit,
/// and against the exact product the error is at most 2^-8 |Y_float| + the float bound
/// 2 gamma_b (|X| |R|). Both are checked over the kernel grid, with strides and in place.
///
/// Bf16Arithmetic::DotProduct (AVX512_BF16 builds) has its own bound (docs/bf16.md), checked
/// below against double products; its gradient kernel is checked against double, and with
/// integer data (where every sum is exact) dtheta equals the float path's bit for bit.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "oft/oft.hpp"
#include "../test_support.hpp"

namespace {

using oft::bfloat16;
using oft::Index;
using oft_test::MatD;
using oft_test::RowMat;
using BfMat = Eigen::Matrix<bfloat16, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

std::uint16_t bits_of(bfloat16 v) { return Eigen::numext::bit_cast<std::uint16_t>(v); }

float float_of_bits(std::uint32_t word) {
  float value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

// narrow_bf16 is Eigen's (and PyTorch's) round to nearest even, bit for bit, over every
// rounding case: exact values, just below / at / above the halfway point with an even and an
// odd kept bit, subnormals, the largest finite values (some round up to infinity), infinities
// and NaNs (quiet, sign kept).
TEST(Bf16, NarrowingIsRoundToNearestEven) {
  std::vector<std::uint32_t> words;
  for (std::uint32_t top : {0x0000u, 0x0001u, 0x007fu, 0x0080u, 0x3f80u, 0x3f81u, 0x4049u,
                            0x7f7eu, 0x7f7fu, 0x7f80u, 0x7fc0u, 0x7f81u})
    for (std::uint32_t low : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu})
      for (std::uint32_t sign : {0u, 0x80000000u}) words.push_back(sign | (top << 16) | low);
  oft_test::Rng rng(5);
  for (int k = 0; k < 20000; ++k)
    words.push_back(static_cast<std::uint32_t>(rng.bits() >> 32));
  int ties = 0;
  for (std::uint32_t word : words) {
    const float value = float_of_bits(word);
    const std::uint16_t ours = oft::detail::cpu::narrow_bf16(value);
    if ((word & 0xffffu) == 0x8000u) ++ties;
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(oft::detail::cpu::widen_bf16(ours))) << std::hex << word;
      EXPECT_EQ(ours & 0x8000u, (word >> 16) & 0x8000u) << std::hex << word;
      continue;
    }
    EXPECT_EQ(ours, bits_of(bfloat16(value))) << std::hex << word;
    // Widening is exact: the kept top half comes back unchanged.
    const float widened = oft::detail::cpu::widen_bf16(ours);
    EXPECT_EQ(oft::detail::cpu::narrow_bf16(widened), ours);
  }
  EXPECT_GE(ties, 24);  // the halfway cases are really exercised (12 tops x 2 signs)
}

// The kernel's packet stores (AVX-512 and AVX2 integer SIMD, and the lane-by-lane fallback for
// other packets) give narrow_bf16's bits in every lane, over the same rounding cases. (Naming
// SIMD types as template arguments drops their may_alias attribute, which GCC warns about; as
// in cpu/gemm_tile.hpp, they are only loaded through Eigen's ploadu here.)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
template <class P>
void check_packet_narrowing(const std::vector<std::uint32_t>& words) {
  constexpr int lanes = Eigen::internal::unpacket_traits<P>::size;
  std::vector<float> values;
  for (std::uint32_t word : words) values.push_back(float_of_bits(word));
  while (values.size() % lanes != 0) values.push_back(0.0f);
  for (std::size_t k = 0; k < values.size(); k += lanes) {
    bfloat16 out[lanes];
    oft::detail::cpu::narrow_packet_bf16(out, Eigen::internal::ploadu<P>(values.data() + k));
    for (int lane = 0; lane < lanes; ++lane)
      ASSERT_EQ(bits_of(out[lane]), oft::detail::cpu::narrow_bf16(values[k + lane]))
          << "lane " << lane << " of a " << lanes << "-lane packet, value " << values[k + lane];
  }
}

TEST(Bf16, PacketNarrowingMatchesNarrowBf16) {
  std::vector<std::uint32_t> words;
  for (std::uint32_t top : {0x0000u, 0x0001u, 0x007fu, 0x0080u, 0x3f80u, 0x3f81u, 0x4049u,
                            0x7f7eu, 0x7f7fu, 0x7f80u, 0x7fc0u, 0x7f81u, 0xff81u})
    for (std::uint32_t low : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu})
      for (std::uint32_t sign : {0u, 0x80000000u}) words.push_back(sign | (top << 16) | low);
  oft_test::Rng rng(6);
  for (int k = 0; k < 20000; ++k)
    words.push_back(static_cast<std::uint32_t>(rng.bits() >> 32));
  using Full = Eigen::internal::packet_traits<float>::type;
  using Half = Eigen::internal::unpacket_traits<Full>::half;
  using Quarter = Eigen::internal::unpacket_traits<Half>::half;
  check_packet_narrowing<Full>(words);
  check_packet_narrowing<Half>(words);
  check_packet_narrowing<Quarter>(words);
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

BfMat to_bf16(const RowMat<float>& m) { return m.cast<bfloat16>(); }
RowMat<float> widen(const BfMat& m) { return m.cast<float>(); }

/// bits(actual) == bits(round_bf16(expected)) everywhere (NaN-free data).
::testing::AssertionResult rounded_from(const BfMat& actual, const RowMat<float>& expected) {
  for (Index i = 0; i < actual.rows(); ++i)
    for (Index j = 0; j < actual.cols(); ++j) {
      const std::uint16_t want = oft::detail::cpu::narrow_bf16(expected(i, j));
      if (bits_of(actual(i, j)) != want)
        return ::testing::AssertionFailure()
               << "entry (" << i << "," << j << "): " << static_cast<float>(actual(i, j))
               << " is not round_bf16(" << expected(i, j) << ")";
    }
  return ::testing::AssertionSuccess();
}

bool same_bits(const BfMat& a, const BfMat& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j)
      if (bits_of(a(i, j)) != bits_of(b(i, j))) return false;
  return true;
}

/// In place against out of place, for strided buffers (row stride `stride`, d columns) holding
/// X and dY: Y over X, dX over dY and dX over X must give the same bits as the out-of-place
/// results y_buf and dx_buf, and the same dtheta as `dtheta_ref`.
template <class Op>
void expect_in_place_matches(const Op& op, const BfMat& x_buf, const BfMat& dy_buf,
                             const BfMat& y_buf, const BfMat& dx_buf,
                             const oft::Generators<float>& dtheta_ref, Index d, Index stride,
                             oft::Workspace<float>& workspace, const std::string& at) {
  const Index n = x_buf.rows(), b = op.spec().block_size, count = op.spec().generators();
  const oft::MatrixView<const bfloat16> xv(x_buf.data(), n, d, stride);
  const oft::MatrixView<const bfloat16> dyv(dy_buf.data(), n, d, stride);
  BfMat inplace = x_buf;
  const oft::MatrixView<bfloat16> inplace_view(inplace.data(), n, d, stride);
  op.apply(inplace_view, inplace_view);
  EXPECT_TRUE(same_bits(inplace, y_buf)) << at << " apply in place";
  BfMat grad = dy_buf;
  const oft::MatrixView<bfloat16> grad_view(grad.data(), n, d, stride);
  oft::Generators<float> dtheta_over_dy(count, b);
  op.backward(xv, grad_view, grad_view, dtheta_over_dy.view(), workspace);
  EXPECT_TRUE(same_bits(grad, dx_buf)) << at << " dX==dY";
  EXPECT_TRUE(oft_test::all_equal(dtheta_over_dy.values(), dtheta_ref.values())) << at;
  BfMat xs = x_buf;
  const oft::MatrixView<bfloat16> xs_view(xs.data(), n, d, stride);
  oft::Generators<float> dtheta_over_x(count, b);
  op.backward(xs_view, dyv, xs_view, dtheta_over_x.view(), workspace);
  EXPECT_TRUE(same_bits(xs, dx_buf)) << at << " dX==X";
  EXPECT_TRUE(oft_test::all_equal(dtheta_over_x.values(), dtheta_ref.values())) << at;
}

// Over the kernel grid: bf16 results are the rounded float results, bit for bit, out of place
// and in place, with strided views whose padding is never read or written, with 1 and 2
// threads; and they are within the derived bound of the exact product.
TEST(Bf16, ActivationsAreTheRoundedFloatPath) {
  oft_test::Rng rng(77);
  const oft::CayleyNeumann policy{3};
  const bfloat16 sentinel(-777.0f);
  for (Index b : {1, 3, 7, 8, 16, 31, 32, 33, 64}) {
    // At b = 64, 10 blocks: backward copies bfloat16 rows in groups of 8 blocks (1 KiB).
    const Index r = b >= 64 ? 10 : 3, d = r * b, stride = d + 3;
    const auto spec = oft::BlockSpec::from_features(d, b);
    oft::BlockOrthogonal<float, oft::CayleyNeumann> op(spec, policy);
    op.set_bf16_arithmetic(oft::Bf16Arithmetic::Float);
    op.set_generators(
        oft_test::random_generators_with_rho<float>(spec.generators(), b, 0.6, rng));
    const RowMat<float> dense = op.dense();
    const MatD dense_d = dense.cast<double>();
    for (Index n : {0, 1, 7, 48, 2049}) {
      const BfMat x = to_bf16(oft_test::random_matrix<float>(n, d, rng));
      const BfMat dy = to_bf16(oft_test::random_matrix<float>(n, d, rng));
      const RowMat<float> xf = widen(x), dyf = widen(dy);
      for (int threads : {1, 2}) {
        oft_test::ScopedThreads scoped(threads);
        const std::string at =
            "b=" + std::to_string(b) + " N=" + std::to_string(n) + " threads=" + std::to_string(threads);
        oft::Workspace<float> workspace;
        // The float path on the widened inputs.
        RowMat<float> y_f(n, d), yt_f(n, d), dx_f(n, d);
        oft::Generators<float> dtheta_f(spec.generators(), b), dtheta_b(spec.generators(), b);
        op.apply(oft::view(xf), oft::view(y_f));
        op.apply_transposed(oft::view(xf), oft::view(yt_f));
        op.backward(oft::view(xf), oft::view(dyf), oft::view(dx_f), dtheta_f.view(), workspace);

        // bf16, strided: padding of the inputs holds the sentinel, of the outputs too.
        BfMat x_buf = BfMat::Constant(n, stride, sentinel), dy_buf = x_buf;
        x_buf.leftCols(d) = x;
        dy_buf.leftCols(d) = dy;
        const oft::MatrixView<const bfloat16> xv(x_buf.data(), n, d, stride);
        const oft::MatrixView<const bfloat16> dyv(dy_buf.data(), n, d, stride);
        BfMat y_buf = BfMat::Constant(n, stride, sentinel), yt_buf = y_buf, dx_buf = y_buf;
        op.apply(xv, oft::MatrixView<bfloat16>(y_buf.data(), n, d, stride));
        op.apply_transposed(xv, oft::MatrixView<bfloat16>(yt_buf.data(), n, d, stride));
        op.backward(xv, dyv, oft::MatrixView<bfloat16>(dx_buf.data(), n, d, stride),
                    dtheta_b.view(), workspace);
        EXPECT_TRUE(rounded_from(y_buf.leftCols(d), y_f)) << at << " apply";
        EXPECT_TRUE(rounded_from(yt_buf.leftCols(d), yt_f)) << at << " apply_transposed";
        EXPECT_TRUE(rounded_from(dx_buf.leftCols(d), dx_f)) << at << " dX";
        EXPECT_TRUE(oft_test::all_equal(dtheta_b.values(), dtheta_f.values())) << at << " dtheta";
        for (const BfMat* out : {&y_buf, &yt_buf, &dx_buf})
          EXPECT_TRUE(n == 0 ||  // (an empty matrix's rightCols offsets a null pointer)
                      same_bits(out->rightCols(stride - d), BfMat::Constant(n, stride - d, sentinel)))
              << at << " padding written";

        // In place: Y over X, dX over dY, dX over X.
        expect_in_place_matches(op, x_buf, dy_buf, y_buf, dx_buf, dtheta_f, d, stride, workspace,
                                at);

        // The derived bound against the exact (double) product of the same inputs:
        // |Y_bf16 - X R| <= 2^-8 |Y_float| + 2 gamma_b |X| |R|.
        const MatD exact = xf.cast<double>() * dense_d;
        const MatD bound = std::ldexp(1.0, -8) * y_f.cast<double>().cwiseAbs() +
                           2.0 * oft_test::gamma<float>(b) *
                               (xf.cast<double>().cwiseAbs() * dense_d.cwiseAbs());
        EXPECT_TRUE(oft_test::within_bound(widen(y_buf.leftCols(d)), exact, bound)) << at;
      }
    }
  }
}

// Bad bfloat16 views are refused like float ones, naming the shapes, before anything is written.
TEST(Bf16, BadShapesAreRefused) {
  const auto spec = oft::BlockSpec::from_features(16, 8);
  oft::BlockOrthogonal<float, oft::ExactCayley> op(spec);
  BfMat x = BfMat::Zero(4, 16), y = BfMat::Constant(4, 12, bfloat16(1.0f));
  try {
    op.apply(oft::MatrixView<const bfloat16>(x.data(), 4, 16),
             oft::MatrixView<bfloat16>(y.data(), 4, 12));
    FAIL() << "a 4x12 Y was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("4x12"), std::string::npos) << e.what();
  }
  EXPECT_TRUE((y.cast<float>().array() == 1.0f).all());
  oft::Workspace<float> workspace;
  oft::Generators<float> dtheta(spec.generators(), 8);
  BfMat dy = BfMat::Zero(3, 16);
  EXPECT_THROW(op.backward(oft::MatrixView<const bfloat16>(x.data(), 4, 16),
                           oft::MatrixView<const bfloat16>(dy.data(), 3, 16), {}, dtheta.view(),
                           workspace),
               std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Bf16Arithmetic::DotProduct
// ---------------------------------------------------------------------------------------------

TEST(Bf16Dot, AvailableExactlyWhereTheBuildHasAvx512Bf16) {
  const auto spec = oft::BlockSpec::from_features(32, 16);
  oft::BlockOrthogonal<float, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{3});
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(EIGEN_VECTORIZE_AVX512)
  EXPECT_TRUE(oft::kBf16DotProductAvailable);
#else
  EXPECT_FALSE(oft::kBf16DotProductAvailable);
#endif
  if (oft::kBf16DotProductAvailable) {
    EXPECT_EQ(op.bf16_arithmetic(), oft::Bf16Arithmetic::DotProduct);  // the default
    op.set_bf16_arithmetic(oft::Bf16Arithmetic::Float);
    EXPECT_EQ(op.bf16_arithmetic(), oft::Bf16Arithmetic::Float);
  } else {
    EXPECT_EQ(op.bf16_arithmetic(), oft::Bf16Arithmetic::Float);
    try {
      op.set_bf16_arithmetic(oft::Bf16Arithmetic::DotProduct);
      FAIL() << "DotProduct accepted without AVX512_BF16";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("AVX512_BF16"), std::string::npos) << e.what();
    }
    EXPECT_EQ(op.bf16_arithmetic(), oft::Bf16Arithmetic::Float);
  }
}

#if defined(OFT_HAVE_BF16_DOT)
/// Entries drawn from the integers -4..4: bfloat16 holds them exactly, and every product and
/// every partial sum of G over up to 2049 tokens is an integer below 2^24, exact in float.
BfMat integer_bf16(Index rows, Index cols, oft_test::Rng& rng) {
  BfMat m(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = bfloat16(static_cast<float>(rng.index(9) - 4));
  return m;
}

/// The DotProduct bound for A * M with M = I + D stored in float and D rounded to bfloat16
/// (docs/bf16.md): with E = 2^-8' |A| |D| + gamma_{b+1} (|A| + (1 + 2^-8') |A| |D|) + F, where
/// 2^-8' = 2^-8 + 2^-22 also covers the float rounding of R - I and F = (2b + 4) 2^-126 (1 + |D|)
/// the flushing of subnormals (vdpbf16ps treats them as zero: inputs, products, sums, output),
///   |out - A M| <= 2^-8 (|A M| + E) + E   (the outer term: one rounding of the output).
MatD dot_bound(const MatD& a, const MatD& m, Index b) {
  const double bf16_u = std::ldexp(1.0, -8) + std::ldexp(1.0, -22);
  const MatD d_abs = (m - MatD::Identity(m.rows(), m.cols())).cwiseAbs();
  const MatD ad = a.cwiseAbs() * d_abs;
  const double flush =
      static_cast<double>(2 * b + 4) * std::ldexp(1.0, -126) * (1.0 + d_abs.maxCoeff());
  const double gamma = oft_test::gamma<float>(b + 1);
  const MatD e = (bf16_u * ad + gamma * (a.cwiseAbs() + (1.0 + bf16_u) * ad)).array() + flush;
  return std::ldexp(1.0, -8) * ((a * m).cwiseAbs() + e) + e;
}

// The gradient kernel alone: G0 + X^T dY from interleaved row pairs, against double, within
// gamma_{n+1} (|G0| + |X|^T |dY|) (exact products, float sums in some order) plus
// (3n + 2) 2^-126 for flushed subnormals (|X|, |dY| < 1 here), for every block size of the grid
// and odd and even token counts.
TEST(Bf16Dot, GradientKernelIsWithinTheFloatSumBound) {
  oft_test::Rng rng(91);
  for (Index b : {1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 64, 128})
    for (Index n : {1, 2, 7, 64}) {
      const Index stride = b + 5;
      BfMat x = to_bf16(oft_test::random_matrix<float>(n, stride, rng));
      BfMat dy = to_bf16(oft_test::random_matrix<float>(n, stride, rng));
      const RowMat<float> g0 = oft_test::random_matrix<float>(b, b, rng);
      const Index pairs = (n + 1) / 2;
      std::vector<std::uint32_t> x_pairs(static_cast<size_t>(pairs * b), 0xdeadbeefu),
          dy_pairs = x_pairs;
      oft::detail::cpu::interleave_rows(oft::detail::cpu::bits(x.data()), stride, n, b,
                                       x_pairs.data());
      oft::detail::cpu::interleave_rows(oft::detail::cpu::bits(dy.data()), stride, n, b,
                                       dy_pairs.data());
      RowMat<float> g = g0;
      oft::detail::cpu::gradient_pairs(b, pairs, x_pairs.data(), dy_pairs.data(), g.data());
      const MatD xd = widen(x).leftCols(b).cast<double>();
      const MatD dyd = widen(dy).leftCols(b).cast<double>();
      const MatD exact = g0.cast<double>() + xd.transpose() * dyd;
      const MatD bound =
          (oft_test::gamma<float>(n + 1) *
           (g0.cast<double>().cwiseAbs() + xd.cwiseAbs().transpose() * dyd.cwiseAbs()))
              .array() +
          static_cast<double>(3 * n + 2) * std::ldexp(1.0, -126);
      EXPECT_TRUE(oft_test::within_bound(g, exact, bound)) << "b=" << b << " n=" << n;
    }
}

// Over the kernel grid, strided with sentinel padding, 1 and 2 threads, in place and out of
// place: Y, Y^T-apply and dX within dot_bound of the double products; dtheta bit for bit the
// float path's on integer data (exact sums), and the same in place.
TEST(Bf16Dot, OperatorIsWithinItsBound) {
  oft_test::Rng rng(78);
  const bfloat16 sentinel(-777.0f);
  for (Index b : {1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 64, 128}) {
    const Index r = b >= 64 ? 4 : 3, d = r * b, stride = d + 3;
    const auto spec = oft::BlockSpec::from_features(d, b);
    oft::BlockOrthogonal<float, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{3});
    op.set_generators(
        oft_test::random_generators_with_rho<float>(spec.generators(), b, 0.3, rng));
    const MatD dense = op.dense().cast<double>();
    for (Index n : {0, 1, 7, 48, 2049}) {
      for (int threads : {1, 2}) {
        oft_test::ScopedThreads scoped(threads);
        const std::string at = "b=" + std::to_string(b) + " N=" + std::to_string(n) +
                               " threads=" + std::to_string(threads);
        oft::Workspace<float> workspace;
        for (bool integer : {false, true}) {
          const BfMat x = integer ? integer_bf16(n, d, rng)
                                  : to_bf16(oft_test::random_matrix<float>(n, d, rng));
          const BfMat dy = integer ? integer_bf16(n, d, rng)
                                   : to_bf16(oft_test::random_matrix<float>(n, d, rng));
          const MatD xd = widen(x).cast<double>(), dyd = widen(dy).cast<double>();
          BfMat x_buf = BfMat::Constant(n, stride, sentinel), dy_buf = x_buf;
          x_buf.leftCols(d) = x;
          dy_buf.leftCols(d) = dy;
          const oft::MatrixView<const bfloat16> xv(x_buf.data(), n, d, stride);
          const oft::MatrixView<const bfloat16> dyv(dy_buf.data(), n, d, stride);
          BfMat y_buf = BfMat::Constant(n, stride, sentinel), yt_buf = y_buf, dx_buf = y_buf;
          oft::Generators<float> dtheta(spec.generators(), b), dtheta_f(spec.generators(), b);

          op.set_bf16_arithmetic(oft::Bf16Arithmetic::DotProduct);
          op.apply(xv, oft::MatrixView<bfloat16>(y_buf.data(), n, d, stride));
          op.apply_transposed(xv, oft::MatrixView<bfloat16>(yt_buf.data(), n, d, stride));
          op.backward(xv, dyv, oft::MatrixView<bfloat16>(dx_buf.data(), n, d, stride),
                      dtheta.view(), workspace);
          const std::string with = at + (integer ? " integer data" : " random data");
          EXPECT_TRUE(oft_test::within_bound(widen(y_buf.leftCols(d)), xd * dense,
                                             dot_bound(xd, dense, b)))
              << with << " apply";
          EXPECT_TRUE(oft_test::within_bound(widen(yt_buf.leftCols(d)), xd * dense.transpose(),
                                             dot_bound(xd, dense.transpose(), b)))
              << with << " apply_transposed";
          EXPECT_TRUE(oft_test::within_bound(widen(dx_buf.leftCols(d)), dyd * dense.transpose(),
                                             dot_bound(dyd, dense.transpose(), b)))
              << with << " dX";
          for (const BfMat* out : {&y_buf, &yt_buf, &dx_buf})
            EXPECT_TRUE(n == 0 || same_bits(out->rightCols(stride - d),
                                            BfMat::Constant(n, stride - d, sentinel)))
                << with << " padding written";

          // In place: Y over X, dX over dY, dX over X; the same bits as out of place.
          expect_in_place_matches(op, x_buf, dy_buf, y_buf, dx_buf, dtheta, d, stride, workspace,
                                  with);

          if (integer) {
            op.set_bf16_arithmetic(oft::Bf16Arithmetic::Float);
            op.backward(xv, dyv, {}, dtheta_f.view(), workspace);
            EXPECT_TRUE(oft_test::all_equal(dtheta.values(), dtheta_f.values()))
                << with << " dtheta is not the float path's";
          }
        }
      }
    }
  }
}
// Large out-of-place outputs (>= 8 MiB, line-aligned rows, b a multiple of 32) are written with
// streaming stores, one cache line per row tile. Only the store instruction differs from the
// in-place path, so Y and dX must equal the in-place results bitwise, the padding must stay
// untouched, and a misaligned output (regular stores) must give the same values. 2100 rows leave
// a ragged last panel and a 4-row register-tile tail; 1 and 2 threads.
TEST(Bf16Dot, StreamingOutputsAreTheInPlaceResults) {
  oft_test::Rng rng(9300);
  const bfloat16 sentinel(-777.0f);
  const Index n = 2100, d = 2048, stride = d + 32;  // 64 bytes of padding keep rows aligned
  for (Index b : {16, 32, 64}) {
    const auto spec = oft::BlockSpec::from_features(d, b);
    oft::BlockOrthogonal<float, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{3});
    op.set_generators(
        oft_test::random_generators_with_rho<float>(spec.generators(), b, 0.3, rng));
    const BfMat x = to_bf16(oft_test::random_matrix<float>(n, d, rng));
    const BfMat dy = to_bf16(oft_test::random_matrix<float>(n, d, rng));
    const oft::MatrixView<const bfloat16> xv(x.data(), n, d), dyv(dy.data(), n, d);
    for (int threads : {1, 2}) {
      oft_test::ScopedThreads scoped(threads);
      const std::string at = "b=" + std::to_string(b) + " threads=" + std::to_string(threads);
      oft::Workspace<float> workspace;
      oft::Generators<float> dtheta(spec.generators(), b), dtheta_in_place(spec.generators(), b);
      BfMat y_ref = x, dx_ref = dy;
      const oft::MatrixView<bfloat16> y_ref_view(y_ref.data(), n, d);
      const oft::MatrixView<bfloat16> dx_ref_view(dx_ref.data(), n, d);
      op.apply(y_ref_view, y_ref_view);
      op.backward(xv, dx_ref_view, dx_ref_view, dtheta_in_place.view(), workspace);

      BfMat y_buf = BfMat::Constant(n, stride, sentinel), dx_buf = y_buf;
      const oft::MatrixView<bfloat16> yv(y_buf.data(), n, d, stride);
      const oft::MatrixView<bfloat16> dxv(dx_buf.data(), n, d, stride);
      ASSERT_EQ(oft::detail::cpu::rotate_streaming_allowed(oft::detail::cpu::bits(yv.data()),
                                                          yv.stride(), b),
                b % 32 == 0)
          << at;
      op.apply(xv, yv);
      op.backward(xv, dyv, dxv, dtheta.view(), workspace);
      EXPECT_TRUE(same_bits(y_buf.leftCols(d), y_ref)) << at << " Y streamed";
      EXPECT_TRUE(same_bits(dx_buf.leftCols(d), dx_ref)) << at << " dX streamed";
      EXPECT_TRUE(same_bits(y_buf.rightCols(stride - d), BfMat::Constant(n, stride - d, sentinel)))
          << at;
      EXPECT_TRUE(same_bits(dx_buf.rightCols(stride - d), BfMat::Constant(n, stride - d, sentinel)))
          << at;
      EXPECT_TRUE(oft_test::all_equal(dtheta.values(), dtheta_in_place.values())) << at;

      // One value off the line alignment: regular stores, the same values.
      BfMat shifted = BfMat::Constant(n, stride, sentinel);
      const oft::MatrixView<bfloat16> sv(shifted.data() + 1, n, d, stride);
      ASSERT_FALSE(oft::detail::cpu::rotate_streaming_allowed(oft::detail::cpu::bits(sv.data()),
                                                             sv.stride(), b))
          << at;
      op.apply(xv, sv);
      EXPECT_TRUE(same_bits(shifted.middleCols(1, d), y_ref)) << at << " Y misaligned";
      op.backward(xv, dyv, sv, dtheta.view(), workspace);
      EXPECT_TRUE(same_bits(shifted.middleCols(1, d), dx_ref)) << at << " dX misaligned";
    }
  }
}
#endif  // OFT_HAVE_BF16_DOT

}  // namespace
