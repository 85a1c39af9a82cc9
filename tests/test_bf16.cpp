/// bfloat16 activations on the CPU (issue 11): X, dY, Y, dX in bfloat16 with a float operator.
///
/// The contract (docs/bf16.md): the kernels widen the bfloat16 inputs exactly, compute in float
/// exactly as the float path does, and round each output once to nearest even. So, on the same
/// (widened) inputs and with the same thread count,
///   Y_bf16 == round_bf16(Y_float) and dX_bf16 == round_bf16(dX_float), bit for bit, and
///   dtheta_bf16 == dtheta_float, bit for bit,
/// and against the exact product the error is at most 2^-8 |Y_float| + the float bound
/// 2 gamma_b (|X| |R|). Both are checked over the kernel grid, with strides and in place.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "oft/oft.hpp"
#include "test_support.hpp"

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
    const std::uint16_t ours = oft::cpu_detail::narrow_bf16(value);
    if ((word & 0xffffu) == 0x8000u) ++ties;
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(oft::cpu_detail::widen_bf16(ours))) << std::hex << word;
      EXPECT_EQ(ours & 0x8000u, (word >> 16) & 0x8000u) << std::hex << word;
      continue;
    }
    EXPECT_EQ(ours, bits_of(bfloat16(value))) << std::hex << word;
    // Widening is exact: the kept top half comes back unchanged.
    const float widened = oft::cpu_detail::widen_bf16(ours);
    EXPECT_EQ(oft::cpu_detail::narrow_bf16(widened), ours);
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
    oft::cpu_detail::narrow_packet_bf16(out, Eigen::internal::ploadu<P>(values.data() + k));
    for (int lane = 0; lane < lanes; ++lane)
      ASSERT_EQ(bits_of(out[lane]), oft::cpu_detail::narrow_bf16(values[k + lane]))
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
      const std::uint16_t want = oft::cpu_detail::narrow_bf16(expected(i, j));
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

        // In place: Y over X, dX over dY.
        BfMat inplace = x_buf;
        const oft::MatrixView<bfloat16> inplace_view(inplace.data(), n, d, stride);
        op.apply(inplace_view, inplace_view);
        EXPECT_TRUE(same_bits(inplace, y_buf)) << at << " apply in place";
        BfMat grad = dy_buf;
        const oft::MatrixView<bfloat16> grad_view(grad.data(), n, d, stride);
        oft::Generators<float> dtheta_in_place(spec.generators(), b);
        op.backward(xv, grad_view, grad_view, dtheta_in_place.view(), workspace);
        EXPECT_TRUE(same_bits(grad, dx_buf)) << at << " dX==dY";
        EXPECT_TRUE(oft_test::all_equal(dtheta_in_place.values(), dtheta_f.values())) << at;

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

}  // namespace
