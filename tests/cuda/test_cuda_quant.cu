// Quantized frozen bases on the GPU (include/oft/cuda/quant.hpp) against the CPU formats
// (include/oft/quant/bnb4.hpp, int8.hpp, themselves bit for bit with bitsandbytes): rectangles
// dequantized on the device must equal the CPU's values bit for bit (NF4/FP4 with blocks that
// cross rows, float16/bfloat16 rounding, LLM.int8), and the fused products must equal the
// products with the dequantized W within a rigorous fp32 dot-product bound.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <oft/cuda/quant.hpp>
#include <oft/half.hpp>
#include <oft/quant/bnb4.hpp>
#include <oft/quant/int8.hpp>
#include <random>
#include <vector>

#include "cuda_test_support.cuh"

namespace {

using oft::Index;
using oft_cuda_test::CudaTest;
using oft_cuda_test::DeviceArray;

std::vector<float> random_weight(Index rows, Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (float& v : w) v = normal(gen);
  return w;
}

float round_like(float v, oft::cuda_quant::Rounding r) {
  if (r == oft::cuda_quant::Rounding::F16) return oft::f16_to_float(oft::float_to_f16(v));
  if (r == oft::cuda_quant::Rounding::BF16)
    return oft::bf16_to_float(oft::float_to_bf16(v));
  return v;
}

/// A quantized weight on the host and on the device.
struct Bnb4Case {
  Index rows, cols;
  oft::quant::Bnb4Tensor host;
  DeviceArray<std::uint8_t> packed;
  DeviceArray<float> absmax;
  oft::cuda_quant::Bnb4View view;

  Bnb4Case(Index r, Index c, Index blocksize, oft::quant::Bnb4Type type,
           oft::cuda_quant::Rounding rounding)
      : rows(r),
        cols(c),
        host(quantize(r, c, blocksize, type)),
        packed(host.packed),
        absmax(host.absmax) {
    view.packed = packed.data();
    view.absmax = absmax.data();
    view.rows = r;
    view.cols = c;
    view.blocksize = blocksize;
    view.code = oft::quant::bnb4_code(type);
    view.rounding = rounding;
  }
  static oft::quant::Bnb4Tensor quantize(Index r, Index c, Index blocksize,
                                         oft::quant::Bnb4Type type) {
    const std::vector<float> w = random_weight(r, c, 7u + static_cast<unsigned>(r * c));
    return oft::quant::quantize_bnb4(w.data(), r * c, blocksize, type);
  }
  std::vector<float> reference() const {
    std::vector<float> out(static_cast<std::size_t>(rows * cols));
    oft::quant::dequantize_bnb4(host, out.data());
    for (float& v : out) v = round_like(v, view.rounding);
    return out;
  }
};

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out(v.size());
  std::memcpy(out.data(), v.data(), v.size() * sizeof(float));
  return out;
}

template <class View>
std::vector<float> device_rectangle(const View& view, Index row0, Index nrows, Index col0,
                                    Index ncols) {
  DeviceArray<float> out(static_cast<std::size_t>(nrows * ncols));
  oft::cuda_quant::dequantize(view, row0, nrows, col0, ncols, out.data(), ncols, nullptr);
  oft_cuda_test::sync_device("dequantize");
  return out.download();
}

std::vector<float> host_rectangle(const std::vector<float>& w, Index cols, Index row0, Index nrows,
                                  Index col0, Index ncols) {
  std::vector<float> out;
  for (Index i = 0; i < nrows; ++i)
    for (Index j = 0; j < ncols; ++j)
      out.push_back(w[static_cast<std::size_t>((row0 + i) * cols + col0 + j)]);
  return out;
}

class CudaQuant : public CudaTest {};

TEST_F(CudaQuant, Bnb4RectanglesEqualTheCpuDequantizerBitForBit) {
  using oft::cuda_quant::Rounding;
  for (const auto type : {oft::quant::Bnb4Type::NF4, oft::quant::Bnb4Type::FP4})
    for (const auto rounding : {Rounding::F32, Rounding::F16, Rounding::BF16}) {
      // 37 x 90 in blocks of 64: blocks cross rows, an odd count, a ragged last block.
      Bnb4Case c(37, 90, 64, type, rounding);
      const std::vector<float> whole = c.reference();
      EXPECT_EQ(bits(device_rectangle(c.view, 0, 37, 0, 90)), bits(whole));
      EXPECT_EQ(bits(device_rectangle(c.view, 5, 11, 3, 57)),
                bits(host_rectangle(whole, 90, 5, 11, 3, 57)));
      EXPECT_EQ(bits(device_rectangle(c.view, 36, 1, 89, 1)),
                bits(host_rectangle(whole, 90, 36, 1, 89, 1)));
    }
}

// More rows than the kernels' grid has in y (65,535): each block walks several rows.
TEST_F(CudaQuant, RectanglesOfMoreThan65535RowsEqualTheCpuDequantizers) {
  constexpr Index rows = 70001, cols = 3;
  Bnb4Case c(rows, cols, 64, oft::quant::Bnb4Type::NF4, oft::cuda_quant::Rounding::F32);
  EXPECT_EQ(bits(device_rectangle(c.view, 0, rows, 0, cols)), bits(c.reference()));
  const std::vector<float> w = random_weight(rows, cols, 4);
  const oft::quant::Int8Tensor t = oft::quant::quantize_int8(w.data(), rows, cols);
  DeviceArray<std::int8_t> values(t.values);
  DeviceArray<float> scales(t.scales);
  const oft::cuda_quant::Int8View view{values.data(), scales.data(), rows, cols};
  EXPECT_EQ(bits(device_rectangle(view, 0, rows, 0, cols)), bits(oft::quant::dequantize_int8(t)));
}

TEST_F(CudaQuant, Bnb4BlocksizeMustBeAPowerOfTwo) {
  Bnb4Case c(4, 16, 64, oft::quant::Bnb4Type::NF4, oft::cuda_quant::Rounding::F32);
  c.view.blocksize = 48;
  DeviceArray<float> out(64);
  EXPECT_THROW(oft::cuda_quant::dequantize(c.view, 0, 4, 0, 16, out.data(), 16, nullptr),
               std::invalid_argument);
}

TEST_F(CudaQuant, Int8RectanglesEqualTheCpuDequantizerBitForBit) {
  const std::vector<float> w = random_weight(29, 70, 3);
  const oft::quant::Int8Tensor t = oft::quant::quantize_int8(w.data(), 29, 70);
  const std::vector<float> whole = oft::quant::dequantize_int8(t);
  DeviceArray<std::int8_t> values(t.values);
  DeviceArray<float> scales(t.scales);
  const oft::cuda_quant::Int8View view{values.data(), scales.data(), 29, 70};
  EXPECT_EQ(bits(device_rectangle(view, 0, 29, 0, 70)), bits(whole));
  EXPECT_EQ(bits(device_rectangle(view, 3, 20, 13, 41)),
            bits(host_rectangle(whole, 70, 3, 20, 13, 41)));
}

/// The fused products against the float products over the dequantized W: each entry within
/// gamma_k sum |y||w| (fp32 dot products of length k in any order; Higham eq. 3.5), doubled for
/// cuBLAS's possible split-K accumulation. Every matrix has a leading dimension above its width
/// (padding filled with NaN on the inputs, checked intact on the outputs), and Z is computed
/// twice: overwritten, then accumulated onto a prefilled C (Z = C + Y W^T, one more rounding).
template <class View>
void check_products(const View& view, const std::vector<float>& w, Index n,
                    Index panel_width = oft::cuda_quant::kFusedPanelWidth) {
  const Index d = view.cols, n_out = view.rows;
  const Index ldy = d + 3, lddz = n_out + 5, ldz = n_out + 2, lddy = d + 1;
  const float nan = std::numeric_limits<float>::quiet_NaN(), sentinel = -123.0f;
  const std::vector<float> y = random_weight(n, d, 11), dz = random_weight(n, n_out, 13),
                           c = random_weight(n, n_out, 17);
  const auto padded = [](const std::vector<float>& m, Index rows, Index cols, Index ld,
                         float fill) {
    std::vector<float> out(static_cast<std::size_t>(rows * ld), fill);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j)
        out[static_cast<std::size_t>(i * ld + j)] = m[static_cast<std::size_t>(i * cols + j)];
    return out;
  };
  DeviceArray<float> y_dev(padded(y, n, d, ldy, nan)), dz_dev(padded(dz, n, n_out, lddz, nan)),
      z_dev(std::vector<float>(static_cast<std::size_t>(n * ldz), sentinel)),
      zc_dev(padded(c, n, n_out, ldz, sentinel)),
      dy_dev(std::vector<float>(static_cast<std::size_t>(n * lddy), sentinel)),
      panel(static_cast<std::size_t>(oft::cuda_quant::fused_panel_floats(n_out, d, panel_width)));
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  oft::cuda_quant::dequant_gemm_nt(handle, view, y_dev.data(), ldy, n, z_dev.data(), ldz,
                                   panel.data(), nullptr, false, panel_width);
  oft::cuda_quant::dequant_gemm_nt(handle, view, y_dev.data(), ldy, n, zc_dev.data(), ldz,
                                   panel.data(), nullptr,
                                   /*accumulate=*/true, panel_width);
  oft::cuda_quant::dequant_gemm_nn(handle, view, dz_dev.data(), lddz, n, dy_dev.data(), lddy,
                                   panel.data(), nullptr, panel_width);
  oft_cuda_test::sync_device("fused products");
  cublasDestroy(handle);
  const std::vector<float> z = z_dev.download(), zc = zc_dev.download(), dy = dy_dev.download();
  const auto gamma = [](Index k) {
    const double u = std::ldexp(1.0, -24);
    return 2.0 * k * u / (1.0 - k * u);
  };
  double worst = 0;
  for (Index t = 0; t < n; ++t) {
    for (Index o = 0; o < n_out; ++o) {
      double exact = 0, magnitude = 0;
      for (Index i = 0; i < d; ++i) {
        const double p = double(y[t * d + i]) * double(w[o * d + i]);
        exact += p;
        magnitude += std::fabs(p);
      }
      const double err = std::fabs(double(z[t * ldz + o]) - exact);
      ASSERT_LE(err, gamma(d) * magnitude + 1e-30) << "Z[" << t << "," << o << "]";
      worst = std::max(worst, err);
      const double cz = double(c[t * n_out + o]);
      ASSERT_LE(std::fabs(double(zc[t * ldz + o]) - (cz + exact)),
                gamma(d + 1) * (magnitude + std::fabs(cz)) + 1e-30)
          << "C + Z[" << t << "," << o << "]";
    }
    for (Index o = n_out; o < ldz; ++o) {
      ASSERT_EQ(z[t * ldz + o], sentinel) << "Z padding written";
      ASSERT_EQ(zc[t * ldz + o], sentinel) << "C + Z padding written";
    }
    for (Index i = 0; i < d; ++i) {
      double exact = 0, magnitude = 0;
      for (Index o = 0; o < n_out; ++o) {
        const double p = double(dz[t * n_out + o]) * double(w[o * d + i]);
        exact += p;
        magnitude += std::fabs(p);
      }
      ASSERT_LE(std::fabs(double(dy[t * lddy + i]) - exact), gamma(n_out) * magnitude + 1e-30)
          << "dY[" << t << "," << i << "]";
    }
    ASSERT_EQ(dy[t * lddy + d], sentinel) << "dY padding written";
  }
  if (n > 0) EXPECT_GT(worst, 0.0);  // the products were computed (not left at zero)
}

TEST_F(CudaQuant, FusedProductsEqualTheDenseProductsOverTheDequantizedWeight) {
  // 600 x 700: one default panel, and 512- and 97-wide panels (several both ways, with tails).
  Bnb4Case c(600, 700, 64, oft::quant::Bnb4Type::NF4, oft::cuda_quant::Rounding::F32);
  check_products(c.view, c.reference(), 33);
  check_products(c.view, c.reference(), 33, 512);
  check_products(c.view, c.reference(), 5, 97);
  const std::vector<float> w = random_weight(520, 130, 5);
  const oft::quant::Int8Tensor t = oft::quant::quantize_int8(w.data(), 520, 130);
  DeviceArray<std::int8_t> values(t.values);
  DeviceArray<float> scales(t.scales);
  check_products(oft::cuda_quant::Int8View{values.data(), scales.data(), 520, 130},
                 oft::quant::dequantize_int8(t), 7);
  check_products(oft::cuda_quant::Int8View{values.data(), scales.data(), 520, 130},
                 oft::quant::dequantize_int8(t), 7, 100);
  check_products(c.view, c.reference(), 0);  // N = 0: nothing to multiply, no cuBLAS call
}

}  // namespace
