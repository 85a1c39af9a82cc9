// cuda_quant::QoftLinear (include/oft/cuda/qoft_linear.hpp), the QOFT layer on the GPU, against
// the CPU OftLinear in double over the dequantized weight (the float values the fused GEMMs
// multiply, bit for bit: test_cuda_quant.cu): forward with and without bias and with strided
// activations, backward (dX, dtheta, dX in place over X, each output skipped, N = 0), for NF4
// (float32 values), FP4 (bfloat16 rounding) and LLM.int8 bases; frozen bytes; bad input.
// The bounds are OftLinear<float>'s (linear_checks.cuh: the layer GEMM is an fp32 cuBLAS product
// there too), with the dequantized weight as W0.

#include <limits>
#include <oft/cuda/qoft_linear.hpp>
#include <oft/quant/bnb4.hpp>
#include <oft/quant/int8.hpp>
#include <string>
#include <vector>

#include "linear_checks.cuh"

namespace {

using oft_cuda_test::DeviceArray;
using oft_cuda_test::DeviceMatrix;
using oft_cuda_test::Index;
using oft_cuda_test::kExactCayley;
using oft_cuda_test::kLayerBlocks;
using oft_cuda_test::kOutputs;
using oft_cuda_test::OpConfig;
using oft_cuda_test::Rng;
using oft_cuda_test::throws_with;

class CudaQoftLinear : public oft_cuda_test::CudaTest {};

enum class Format { NF4, FP4_BF16, Int8 };

const char* name(Format f) {
  return f == Format::NF4 ? "NF4" : f == Format::FP4_BF16 ? "FP4/bf16" : "int8";
}

/// A CPU base of `format` over a random n_out x d weight (kept: the reference dequantizes it).
struct CpuBase {
  Format format;
  std::vector<float> dequantized;  ///< n_out x d, what the layer multiplies
  oft::quant::Bnb4Base bnb4;
  oft::quant::Int8Base int8;

  static std::vector<float> weight(Index rows, Index cols, Rng& rng) {
    std::vector<float> w = oft_cuda_test::random_values<float>(rows * cols, rng);
    for (float& v : w) v *= 0.1f;
    return w;
  }
  CpuBase(Format f, Index rows, Index cols, Rng& rng)
      : format(f),
        bnb4(make_bnb4(f, weight(rows, cols, rng), rows, cols)),
        int8(make_int8(weight(rows, cols, rng), rows, cols)) {
    dequantized = f == Format::Int8 ? oft::quant::dequantize_all<float>(int8)
                                    : oft::quant::dequantize_all<float>(bnb4);
  }
  static oft::quant::Bnb4Base make_bnb4(Format f, const std::vector<float>& w, Index rows,
                                        Index cols) {
    const auto type = f == Format::NF4 ? oft::quant::Bnb4Type::NF4 : oft::quant::Bnb4Type::FP4;
    const auto dtype =
        f == Format::FP4_BF16 ? oft::quant::DequantDtype::BF16 : oft::quant::DequantDtype::F32;
    // blocksize 64 over 24 x 4b values: blocks cross rows, the last one is ragged for b = 2.
    return oft::quant::Bnb4Base(oft::quant::quantize_bnb4(w.data(), rows * cols, 64, type), rows,
                                cols, dtype);
  }
  static oft::quant::Int8Base make_int8(const std::vector<float>& w, Index rows, Index cols) {
    return oft::quant::Int8Base(oft::quant::quantize_int8(w.data(), rows, cols));
  }
};

/// Runs `f(layer)` on the GPU layer of `base` (the device base type follows the format).
template <class Policy, class F>
void with_layer(const CpuBase& base, const float* bias, const OpConfig& config, F&& f) {
  if (base.format == Format::Int8) {
    oft::cuda_quant::QoftLinear<Policy, oft::cuda_quant::DeviceInt8Base> layer(
        oft::cuda_quant::DeviceInt8Base(base.int8), bias, config.b, config.shared,
        oft_cuda_test::make_policy<Policy>(config));
    f(layer);
  } else {
    oft::cuda_quant::QoftLinear<Policy, oft::cuda_quant::DeviceBnb4Base> layer(
        oft::cuda_quant::DeviceBnb4Base(base.bnb4), bias, config.b, config.shared,
        oft_cuda_test::make_policy<Policy>(config));
    f(layer);
  }
}

template <class Layer>
void set_theta(Layer& layer, const OpConfig& config, const DeviceArray<float>& theta) {
  layer.set_generators(
      oft::DeviceMatrixView<const float>(theta.data(), config.generators(), config.packed()),
      nullptr);
}

template <class Policy>
void check_forward(Format format, int terms, std::uint64_t seed) {
  Rng rng(seed);
  for (Index b : {2, 8, 32})
    for (bool shared : {false, true})
      for (bool with_bias : {true, false}) {
        const OpConfig config{kLayerBlocks, b, shared, terms};
        const Index d = config.features();
        SCOPED_TRACE(std::string(name(format)) + " " + oft_cuda_test::describe(config) +
                     (with_bias ? " bias" : " no bias"));
        const CpuBase base(format, kOutputs, d, rng);
        const std::vector<float> theta = oft_cuda_test::random_theta<float>(config, 0.6, rng);
        const std::vector<float> bias =
            with_bias ? oft_cuda_test::random_values<float>(kOutputs, rng) : std::vector<float>();
        const DeviceArray<float> theta_dev(theta), bias_dev(bias);
        const std::vector<double> thetad = oft_cuda_test::to_double(theta),
                                  w0d = oft_cuda_test::to_double(base.dequantized),
                                  biasd = oft_cuda_test::to_double(bias);
        const std::vector<double> blocks =
            oft_cuda_test::cpu_rotation_blocks<double>(config, thetad);
        const std::vector<double> rt = oft_cuda_test::rotation_tolerances(
            config, oft_cuda_test::row_rho_bounds(config, theta), oft_cuda_test::eps_of<float>());
        with_layer<Policy>(base, with_bias ? bias_dev.data() : nullptr, config, [&](auto& layer) {
          EXPECT_EQ(layer.in_features(), d);
          EXPECT_EQ(layer.out_features(), kOutputs);
          EXPECT_EQ(layer.has_bias(), with_bias);
          set_theta(layer, config, theta_dev);
          struct Case {
            Index n, x_pad, z_pad;
          };
          for (const Case c :
               {Case{0, 0, 0}, Case{1, 0, 0}, Case{7, 0, 0}, Case{128, 0, 0}, Case{33, 5, 3}}) {
            SCOPED_TRACE("forward N=" + std::to_string(c.n) + " ld_x=d+" + std::to_string(c.x_pad) +
                         " ld_z=n_out+" + std::to_string(c.z_pad));
            const Index n = c.n;
            const std::vector<float> x = oft_cuda_test::random_values<float>(n * d, rng);
            const std::vector<double> xd = oft_cuda_test::to_double(x);
            const DeviceMatrix<float> x_dev(x, n, d, d + c.x_pad,
                                            std::numeric_limits<float>::quiet_NaN());
            const float sentinel = -123.0f;
            DeviceMatrix<float> z_dev(
                std::vector<float>(static_cast<std::size_t>(n * kOutputs), sentinel), n, kOutputs,
                kOutputs + c.z_pad, sentinel);
            const std::size_t bytes = layer.workspace_bytes(n);
            DeviceArray<unsigned char> workspace(bytes);
            layer.forward(x_dev.cview(), z_dev.view(), workspace.data(), bytes, nullptr);
            oft_cuda_test::sync_device("forward");
            const std::vector<double> ref = oft_cuda_test::cpu_layer_forward<double>(
                config, thetad, w0d, kOutputs, biasd, xd, n);
            const std::vector<double> bound = oft_cuda_test::layer_forward_bound<float>(
                config, xd, n, blocks, rt, w0d, biasd, ref);
            EXPECT_TRUE(oft_cuda_test::within_bound(oft_cuda_test::to_double(z_dev.dense()), ref,
                                                    bound, kOutputs));
            EXPECT_TRUE(z_dev.padding_intact());
          }
        });
      }
}

template <class Policy>
void check_backward(Format format, int terms, std::uint64_t seed) {
  Rng rng(seed);
  for (Index b : {2, 8, 32})
    for (bool shared : {false, true}) {
      const OpConfig config{kLayerBlocks, b, shared, terms};
      const Index d = config.features(), m = config.packed(), gens = config.generators();
      SCOPED_TRACE(std::string(name(format)) + " " + oft_cuda_test::describe(config));
      const CpuBase base(format, kOutputs, d, rng);
      const std::vector<float> theta = oft_cuda_test::random_theta<float>(config, 0.6, rng);
      const DeviceArray<float> theta_dev(theta),
          bias_dev(oft_cuda_test::random_values<float>(kOutputs, rng));
      const std::vector<double> thetad = oft_cuda_test::to_double(theta),
                                w0d = oft_cuda_test::to_double(base.dequantized);
      const std::vector<double> blocks = oft_cuda_test::cpu_rotation_blocks<double>(config, thetad);
      const std::vector<double> rho = oft_cuda_test::row_rho_bounds(config, theta);
      const std::vector<double> rt =
          oft_cuda_test::rotation_tolerances(config, rho, oft_cuda_test::eps_of<float>());
      with_layer<Policy>(base, bias_dev.data(), config, [&](auto& layer) {
        set_theta(layer, config, theta_dev);
        struct Case {
          Index n, dz_pad;
          bool in_place, want_dx, want_dtheta;
        };
        for (const Case c : {Case{0, 0, false, true, true}, Case{1, 0, false, true, true},
                             Case{7, 0, false, true, true}, Case{128, 0, false, true, true},
                             Case{128, 0, true, true, true}, Case{33, 4, false, true, true},
                             Case{7, 0, false, false, true}, Case{7, 0, false, true, false}}) {
          const Index n = c.n;
          SCOPED_TRACE("backward N=" + std::to_string(n) + " ld_dz=n_out+" +
                       std::to_string(c.dz_pad) + (c.in_place ? " dx==x" : "") +
                       (c.want_dx ? "" : " no dx") + (c.want_dtheta ? "" : " no dtheta"));
          const std::vector<float> x = oft_cuda_test::random_values<float>(n * d, rng);
          const std::vector<float> dz = oft_cuda_test::random_values<float>(n * kOutputs, rng);
          const std::vector<double> xd = oft_cuda_test::to_double(x),
                                    dzd = oft_cuda_test::to_double(dz);
          DeviceArray<float> x_dev(x);
          const DeviceMatrix<float> dz_dev(dz, n, kOutputs, kOutputs + c.dz_pad,
                                           std::numeric_limits<float>::quiet_NaN());
          const float sentinel = -123.0f;
          DeviceArray<float> dx_dev(std::vector<float>(static_cast<std::size_t>(n * d), sentinel));
          DeviceArray<float> dtheta_dev(
              std::vector<float>(static_cast<std::size_t>(gens * m), sentinel));
          const oft::DeviceMatrixView<float> x_view(x_dev.data(), n, d);
          oft::DeviceMatrixView<float> dx_view;
          if (c.want_dx)
            dx_view = c.in_place ? x_view : oft::DeviceMatrixView<float>(dx_dev.data(), n, d);
          const oft::DeviceMatrixView<float> dtheta_view =
              c.want_dtheta ? oft::DeviceMatrixView<float>(dtheta_dev.data(), gens, m)
                            : oft::DeviceMatrixView<float>();
          const std::size_t bytes = layer.workspace_bytes(n);
          DeviceArray<unsigned char> workspace(bytes);
          layer.backward(x_view, dz_dev.cview(), dx_view, dtheta_view, workspace.data(), bytes,
                         nullptr);
          oft_cuda_test::sync_device("backward");
          std::vector<double> dx_ref, dtheta_ref;
          oft_cuda_test::cpu_layer_backward<double>(config, thetad, w0d, kOutputs, xd, dzd, n,
                                                    &dx_ref, &dtheta_ref);
          const oft_cuda_test::LayerBackwardBounds bounds =
              oft_cuda_test::layer_backward_bounds<float>(config, xd, dzd, n, blocks, rt, rho, w0d,
                                                          dx_ref);
          if (c.want_dx) {
            const std::vector<float> dx = c.in_place ? x_dev.download() : dx_dev.download();
            EXPECT_TRUE(
                oft_cuda_test::within_bound(oft_cuda_test::to_double(dx), dx_ref, bounds.dx, d))
                << "dX";
          } else {
            EXPECT_TRUE(oft_cuda_test::bitwise_equal(
                dx_dev.download(), std::vector<float>(static_cast<std::size_t>(n * d), sentinel)));
            EXPECT_TRUE(oft_cuda_test::bitwise_equal(x_dev.download(), x)) << "x modified";
          }
          if (c.want_dtheta) {
            EXPECT_TRUE(oft_cuda_test::rows_within(oft_cuda_test::to_double(dtheta_dev.download()),
                                                   dtheta_ref, m, bounds.dtheta))
                << "dtheta";
          } else {
            EXPECT_TRUE(oft_cuda_test::bitwise_equal(
                dtheta_dev.download(),
                std::vector<float>(static_cast<std::size_t>(gens * m), sentinel)));
          }
          EXPECT_TRUE(oft_cuda_test::bitwise_equal(dz_dev.dense(), dz)) << "dz modified";
          EXPECT_TRUE(dz_dev.padding_intact());
        }
      });
    }
}

TEST_F(CudaQoftLinear, ForwardMatchesCpuOverTheDequantizedWeight) {
  check_forward<oft::CayleyNeumann>(Format::NF4, 3, 1);
  check_forward<oft::ExactCayley>(Format::FP4_BF16, kExactCayley, 2);
  check_forward<oft::CayleyNeumann>(Format::Int8, 3, 3);
}

TEST_F(CudaQoftLinear, BackwardMatchesCpuOverTheDequantizedWeight) {
  check_backward<oft::CayleyNeumann>(Format::NF4, 3, 4);
  check_backward<oft::ExactCayley>(Format::FP4_BF16, kExactCayley, 5);
  check_backward<oft::CayleyNeumann>(Format::Int8, 3, 6);
}

TEST_F(CudaQoftLinear, HoldsOnlyTheQuantizedBytesAndTheBias) {
  Rng rng(7);
  const CpuBase nf4(Format::NF4, 96, 64, rng), int8(Format::Int8, 96, 64, rng);
  const DeviceArray<float> bias(oft_cuda_test::random_values<float>(96, rng));
  oft::cuda_quant::QoftLinear<oft::CayleyNeumann, oft::cuda_quant::DeviceBnb4Base> a(
      oft::cuda_quant::DeviceBnb4Base(nf4.bnb4), bias.data(), 16);
  // 96 * 64 values: 3072 packed bytes, 96 blocks of 64 with one float absmax each, 96 bias floats.
  EXPECT_EQ(a.frozen_bytes(), 3072u + 96u * 4u + 96u * 4u);
  EXPECT_EQ(a.base().bytes(), nf4.bnb4.bytes());
  oft::cuda_quant::QoftLinear<oft::CayleyNeumann, oft::cuda_quant::DeviceInt8Base> c(
      oft::cuda_quant::DeviceInt8Base(int8.int8), nullptr, 16);
  EXPECT_EQ(c.frozen_bytes(), 96u * 64u + 96u * 4u);
  EXPECT_STREQ(c.base().format(), "int8");
  EXPECT_STREQ(a.base().format(), "nf4");
}

// Bad input: std::invalid_argument naming the values at fault, before anything is enqueued.
TEST_F(CudaQoftLinear, BadInput) {
  using Layer = oft::cuda_quant::QoftLinear<oft::CayleyNeumann, oft::cuda_quant::DeviceBnb4Base>;
  using CView = oft::DeviceMatrixView<const float>;
  using View = oft::DeviceMatrixView<float>;
  Rng rng(8);
  constexpr Index n_out = 6, d = 12, n = 5;
  const CpuBase base(Format::NF4, n_out, d, rng);
  const std::vector<float> host_bias(n_out, 1.0f);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { Layer bad(oft::cuda_quant::DeviceBnb4Base(base.bnb4), nullptr, 5); },
      {"d=12", "block size b=5"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { Layer bad(oft::cuda_quant::DeviceBnb4Base(base.bnb4), host_bias.data(), 4); },
      {"bias points to host memory"}));

  Layer layer(oft::cuda_quant::DeviceBnb4Base(base.bnb4), nullptr, 4);
  // z is given n x d floats so that the n x d view of it in the overlap case stays inside it.
  const std::vector<float> z_before(static_cast<std::size_t>(n * d), 7.0f);
  DeviceArray<float> x(static_cast<std::size_t>(n * d)), z(z_before),
      dtheta(static_cast<std::size_t>(3 * 6));
  const std::size_t bytes = layer.workspace_bytes(n);
  DeviceArray<unsigned char> ws(bytes);
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.forward(CView(x.data(), n, d - 1), View(z.data(), n, n_out), ws.data(), bytes,
                      nullptr);
      },
      {"x has shape 5x11", "expected 5x12"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.forward(CView(x.data(), n, d), View(z.data(), n, n_out + 1), ws.data(), bytes,
                      nullptr);
      },
      {"z has shape 5x7", "expected 5x6"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.forward(CView(x.data(), n, d), View(z.data(), n, n_out), ws.data(), bytes - 1,
                      nullptr);
      },
      {"workspace of " + std::to_string(bytes - 1), "needs workspace_bytes(5)"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.forward(CView(x.data(), n, d), View(x.data(), n, n_out), ws.data(), bytes, nullptr);
      },
      {"z overlaps x"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward(CView(x.data(), n, d), CView(z.data(), n, n_out), View(z.data(), n, d),
                       View(dtheta.data(), 3, 6), ws.data(), bytes, nullptr);
      },
      {"dx overlaps dz"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] {
        layer.backward(CView(x.data(), n, d), CView(z.data(), n + 1, n_out), View(),
                       View(dtheta.data(), 3, 6), ws.data(), bytes, nullptr);
      },
      {"x has shape 5x12", "expected 6x12"}));
  oft_cuda_test::sync_device("bad input");
  EXPECT_TRUE(oft_cuda_test::bitwise_equal(z.download(), z_before))
      << "z written by a refused call";
}

}  // namespace
