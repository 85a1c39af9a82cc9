#pragma once
/// \file linear_checks.cuh
/// OftLinear<T, Policy, oft::cuda> against the CPU OftLinear (in double, on the same inputs,
/// exactly representable in T): forward with and without bias, backward (dX, dtheta), merge, and
/// unmerge(merge(W0)) == W0. r = 4 blocks, n_out = 24 (the CPU suite's layer), shared and
/// unshared generators.
///
/// Bounds (Higham eq. 3.5; cuda_test_support.cuh for the apply part). Notation: R' = |R| + rt
/// (rt: rotation_tolerance in the parameter type), M_Y = |X| |R'|, u_s = u_T for 16-bit T (Y,
/// dY are stored in T between the two products: one extra rounding) and 0 for float/double
/// (there the store is the dot product's own last rounding), g_n = gamma_n(T) for float/double
/// and gamma_n(u = eps_f) for 16-bit (cuBLAS fp32 compute; tensor-core accumulation need not
/// round to nearest).
///  - Y = X R (the workspace): |Y - X R| <= e_Y = e_apply + u_s (M_Y + e_apply) + eta_T, with
///    e_apply the fp32/T-level error of apply (gamma_b M_Y + rt sum|X|, plus the R_hi + R_lo
///    split for 16-bit);
///  - Z = Y W0^T + bias (one cuBLAS GEMM over d terms plus the bias, rounded once):
///    e_Z = g_{d+1} ((M_Y + e_Y) |W0|^T + |bias|) + e_Y |W0|^T + gamma_{b+d+1}(double) (M_Y |W0|^T
///    + |bias|) (the reference's own error); float/double: |gpu - ref| <= e_Z; 16-bit: the
///    final rounding adds u_T (|Z_ref| + e_Z) + eta_T.
///  - dY = dZ W0: e_dY = g_{n_out} |dZ| |W0| + u_s (|dZ| |W0| + ...) + eta_T as for Y;
///    dX = dY R^T: the apply_transposed bound on |dY| <= |dZ| |W0| + e_dY, plus e_dY |R'|^T.
///  - dtheta_g: G_g = sum_i X_i^T dY_i, so |G_gpu - G| <= sum_i |X_i|^T e_dY_i + gamma_{n_g}(P)
///    sum_i |X_i|^T |dY_i| entrywise; the VJP amplifies by K and adds a few b eps_P K ||G||:
///    ||d dtheta_g|| <= 4 K (||sum_i |X_i|^T e_dY_i||_F + eps_P (n_g + b) ||A_g||_F), A_g =
///    sum_i |X_i|^T (|dZ| |W0_i| + e_dY_i); for float/double this is the CPU suite's
///    4 eps (n_g + n_out + b) K ||A_g||_F.
///  - merge W' = W0 R^T: the apply_transposed bound with W0 as the input.
///  - unmerge(merge(W0)) per block i: ||W0_i' - W0_i||_F <= (2 u_s (cond_i + 1) + 4 b eps_P cond_i)
///    ||W0_i||_F: the CPU suite's c b eps cond(R_i) (c = 4, merge plus the inverse), plus for
///    16-bit the rounding of W' to T (u_T ||W'_i|| <= u_T ||W0_i|| ||R_i||, amplified by
///    ||R_i^-1||: u_T cond_i ||W0_i||) and of the result (u_T ||W0_i||), with c = 2.

#include <string>
#include <vector>

#include "cuda_test_support.cuh"

namespace oft_cuda_test {

inline constexpr Index kLayerBlocks = 4;
inline constexpr Index kOutputs = 24;

template <class T>
constexpr double stored_roundoff() {
  return oft::is_half_precision_v<T> ? unit_roundoff<T>() : 0.0;
}
template <class T>
double gemm_gamma(Index n) {
  return oft::is_half_precision_v<T> ? gamma_u(n, eps_of<float>()) : gamma<T>(n);
}

/// |A| |B| for row-major A (rows x inner) and B (inner x cols), with B given transposed when
/// `b_transposed` (B = Bt^T, Bt: cols x inner).
inline std::vector<double> abs_product(const std::vector<double>& a, const std::vector<double>& bm,
                                       Index rows, Index inner, Index cols, bool b_transposed) {
  std::vector<double> out(static_cast<std::size_t>(rows * cols), 0.0);
  for (Index i = 0; i < rows; ++i)
    for (Index k = 0; k < inner; ++k) {
      const double aik = std::abs(a[static_cast<std::size_t>(i * inner + k)]);
      if (aik == 0.0) continue;
      for (Index j = 0; j < cols; ++j) {
        const double bkj = b_transposed ? bm[static_cast<std::size_t>(j * inner + k)]
                                        : bm[static_cast<std::size_t>(k * cols + j)];
        out[static_cast<std::size_t>(i * cols + j)] += aik * std::abs(bkj);
      }
    }
  return out;
}

/// Error of a value computed at the fp32 / T level with error `err` and magnitude `mag`, then
/// stored in T: err + u_s (mag + err) + eta_T (the store is exact for float/double: u_s = 0).
template <class T>
double stored_error(double mag, double err) {
  if (!oft::is_half_precision_v<T>) return err;
  return err + stored_roundoff<T>() * (mag + err) + Rounding<T>::eta;
}

/// Entrywise bound of Z = (X R) W0^T + bias (n x n_out) against the reference `ref` (file
/// comment). `bias` is empty without a bias.
template <class T>
std::vector<double> layer_forward_bound(const OpConfig& config, const std::vector<double>& x,
                                        Index n, const std::vector<double>& blocks,
                                        const std::vector<double>& rt,
                                        const std::vector<double>& w0,
                                        const std::vector<double>& bias,
                                        const std::vector<double>& ref) {
  const Index d = config.features(), b = config.b;
  const ApplyMagnitudes my = apply_magnitudes(config, {}, x, n, blocks, rt, false);
  std::vector<double> e_y(my.mag.size()), a_y(my.mag.size());
  for (std::size_t e = 0; e < e_y.size(); ++e) {
    e_y[e] = stored_error<T>(my.mag[e], apply_error<T>(my, e, b));
    a_y[e] = my.mag[e] + e_y[e];
  }
  const std::vector<double> ay_w = abs_product(a_y, w0, n, d, kOutputs, true);
  const std::vector<double> ey_w = abs_product(e_y, w0, n, d, kOutputs, true);
  const std::vector<double> my_w = abs_product(my.mag, w0, n, d, kOutputs, true);
  std::vector<double> bound(static_cast<std::size_t>(n * kOutputs));
  const double g = gemm_gamma<T>(d + 1), gref = gamma<double>(b + d + 1);
  for (Index t = 0; t < n; ++t)
    for (Index o = 0; o < kOutputs; ++o) {
      const std::size_t at = static_cast<std::size_t>(t * kOutputs + o);
      const double bias_abs = bias.empty() ? 0.0 : std::abs(bias[static_cast<std::size_t>(o)]);
      const double err = g * (ay_w[at] + bias_abs) + ey_w[at] + gref * (my_w[at] + bias_abs);
      bound[at] = oft::is_half_precision_v<T>
                      ? unit_roundoff<T>() * (std::abs(ref[at]) + err) + Rounding<T>::eta + err
                      : err;
    }
  return bound;
}

struct LayerBackwardBounds {
  std::vector<double> dx;      ///< entrywise, n x d
  std::vector<double> dtheta;  ///< per generator (2-norm of the row)
};

/// Bounds of the layer's dX (against the reference `dx_ref`) and dtheta for upstream dZ (file
/// comment).
template <class T>
LayerBackwardBounds layer_backward_bounds(const OpConfig& config, const std::vector<double>& x,
                                          const std::vector<double>& dz, Index n,
                                          const std::vector<double>& blocks,
                                          const std::vector<double>& rt,
                                          const std::vector<double>& rho,
                                          const std::vector<double>& w0,
                                          const std::vector<double>& dx_ref) {
  using P = oft::cuda_parameter_t<T>;
  const Index d = config.features(), b = config.b;
  // dY = dZ W0 (cuBLAS, stored in T) and its error.
  const std::vector<double> mdy = abs_product(dz, w0, n, kOutputs, d, false);
  std::vector<double> e_dy(mdy.size()), a_dy(mdy.size());
  for (std::size_t e = 0; e < mdy.size(); ++e) {
    e_dy[e] = stored_error<T>(mdy[e], gemm_gamma<T>(kOutputs) * mdy[e] +
                                          gamma<double>(kOutputs) * mdy[e]);
    a_dy[e] = mdy[e] + e_dy[e];
  }
  LayerBackwardBounds out;
  // dX = dY R^T: the apply_transposed bound on |dY| <= |dZ||W0| + e_dY, plus e_dY |R'|^T.
  const ApplyMagnitudes ma = apply_magnitudes(config, {}, a_dy, n, blocks, rt, true);
  const ApplyMagnitudes me = apply_magnitudes(config, {}, e_dy, n, blocks, rt, true);
  out.dx = apply_bound<T>(ma, dx_ref, b);
  for (std::size_t e = 0; e < out.dx.size(); ++e)
    out.dx[e] += (1.0 + stored_roundoff<T>()) * me.mag[e];
  // dtheta_g: 4 K (||sum_i |X_i|^T e_dY_i||_F + eps_P (n_g + b) ||A_g||_F).
  out.dtheta.resize(static_cast<std::size_t>(config.generators()));
  for (Index g = 0; g < config.generators(); ++g) {
    std::vector<double> a(static_cast<std::size_t>(b * b), 0.0), ee(a.size(), 0.0);
    Index terms_g = 0;
    for (Index i = 0; i < config.blocks; ++i) {
      if (config.generator_of(i) != g) continue;
      terms_g += n;
      for (Index t = 0; t < n; ++t)
        for (Index p = 0; p < b; ++p) {
          const double xa = std::abs(x[static_cast<std::size_t>(t * d + i * b + p)]);
          for (Index q = 0; q < b; ++q) {
            const std::size_t at = static_cast<std::size_t>(t * d + i * b + q);
            a[static_cast<std::size_t>(p * b + q)] += xa * a_dy[at];
            ee[static_cast<std::size_t>(p * b + q)] += xa * e_dy[at];
          }
        }
    }
    double fa = 0.0, fe = 0.0;
    for (std::size_t e = 0; e < a.size(); ++e) {
      fa += a[e] * a[e];
      fe += ee[e] * ee[e];
    }
    out.dtheta[static_cast<std::size_t>(g)] =
        4.0 * derivative_scale(config, rho[static_cast<std::size_t>(g)]) *
        (std::sqrt(fe) + eps_of<P>() * static_cast<double>(terms_g + b) * std::sqrt(fa));
  }
  return out;
}

/// Per-block unmerge bound (file comment): (2 u_s (cond + 1) + 4 b eps_P cond) ||W0_i||_F.
template <class T>
double unmerge_bound(Index b, double cond, double w0_block_norm) {
  using P = oft::cuda_parameter_t<T>;
  return (2.0 * stored_roundoff<T>() * (cond + 1.0) +
          4.0 * static_cast<double>(b) * eps_of<P>() * cond) *
         w0_block_norm;
}

/// A layer on the GPU with its inputs (W0 with a leading dimension > d, to test the copy).
template <class T, class Policy>
struct GpuLayer {
  using P = oft::cuda_parameter_t<T>;
  using Layer = oft::OftLinear<T, Policy, oft::cuda>;
  OpConfig config;
  std::vector<P> theta;
  std::vector<T> w0, bias;
  DeviceArray<P> theta_device;
  Layer layer;

  static Layer make(const OpConfig& c, const std::vector<T>& w, const std::vector<T>& b) {
    const DeviceMatrix<T> w_dev(w, kOutputs, c.features(), c.features() + 3, from_double<T>(0.0));
    const DeviceArray<T> b_dev(b);
    return Layer(w_dev.cview(), b.empty() ? nullptr : b_dev.data(), spec_of(c),
                 make_policy<Policy>(c));
  }
  GpuLayer(const OpConfig& c, const std::vector<P>& t, const std::vector<T>& w,
           const std::vector<T>& b)
      : config(c), theta(t), w0(w), bias(b), theta_device(t), layer(make(c, w, b)) {
    layer.set_generators(oft::DeviceMatrixView<const P>(theta_device.data(), c.generators(),
                                                        c.packed()),
                         nullptr);
    sync_device("set_generators");
  }
};

/// forward against the CPU layer for N in {0, 1, 7, 128} and a strided case (ld_x = d + 5,
/// ld_z = n_out + 3).
template <class T, class Policy>
void check_layer_forward(int terms, const std::vector<Index>& block_sizes, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  Rng rng(seed);
  for (Index b : block_sizes)
    for (bool shared : {false, true})
      for (bool with_bias : {true, false}) {
        const OpConfig config{kLayerBlocks, b, shared, terms};
        const Index d = config.features();
        SCOPED_TRACE(describe(config) + (with_bias ? " bias " : " no bias ") + type_name<T>());
        GpuLayer<T, Policy> l(config, random_theta<P>(config, 0.6, rng),
                              random_values<T>(kOutputs * d, rng),
                              with_bias ? random_values<T>(kOutputs, rng) : std::vector<T>());
        EXPECT_EQ(l.layer.in_features(), d);
        EXPECT_EQ(l.layer.out_features(), kOutputs);
        EXPECT_EQ(l.layer.has_bias(), with_bias);
        {  // weight(): the layer's contiguous copy of W0 (given with ld = d + 3).
          const auto w = l.layer.weight();
          ASSERT_EQ(w.rows(), kOutputs);
          ASSERT_EQ(w.cols(), d);
          ASSERT_EQ(w.ld(), d);
          std::vector<T> copy(l.w0.size());
          cuda_check(cudaMemcpy(copy.data(), w.data(), copy.size() * sizeof(T),
                                cudaMemcpyDeviceToHost),
                     "cudaMemcpy");
          EXPECT_TRUE(bitwise_equal(copy, l.w0)) << "weight() is not W0";
        }
        const std::vector<double> thetad = to_double(l.theta), w0d = to_double(l.w0),
                                  biasd = to_double(l.bias);
        const std::vector<double> blocks = cpu_rotation_blocks<double>(config, thetad);
        const std::vector<double> rt =
            rotation_tolerances(config, row_rho_bounds(config, l.theta), eps_of<P>());
        struct Case {
          Index n, x_pad, z_pad;
        };
        for (const Case c : {Case{0, 0, 0}, Case{1, 0, 0}, Case{7, 0, 0}, Case{128, 0, 0},
                             Case{33, 5, 3}}) {
          SCOPED_TRACE("forward N=" + std::to_string(c.n) + " ld_x=d+" + std::to_string(c.x_pad) +
                       " ld_z=n_out+" + std::to_string(c.z_pad));
          const Index n = c.n;
          const std::vector<T> x = random_values<T>(n * d, rng);
          const std::vector<double> xd = to_double(x);
          const DeviceMatrix<T> x_dev(x, n, d, d + c.x_pad,
                                      from_double<T>(std::numeric_limits<double>::quiet_NaN()));
          const T sentinel = from_double<T>(-123.0);
          DeviceMatrix<T> z_dev(std::vector<T>(static_cast<std::size_t>(n * kOutputs), sentinel), n,
                                kOutputs, kOutputs + c.z_pad, sentinel);
          const std::size_t bytes = l.layer.workspace_bytes(n);
          DeviceArray<unsigned char> workspace(bytes);
          l.layer.forward(x_dev.cview(), z_dev.view(), workspace.data(), bytes, nullptr);
          sync_device("forward");
          const std::vector<double> ref =
              cpu_layer_forward<double>(config, thetad, w0d, kOutputs, biasd, xd, n);

          const std::vector<double> bound =
              layer_forward_bound<T>(config, xd, n, blocks, rt, w0d, biasd, ref);
          EXPECT_TRUE(within_bound(to_double(z_dev.dense()), ref, bound, kOutputs));
          EXPECT_TRUE(z_dev.padding_intact());
        }
      }
}

/// backward against the CPU layer: dX and dtheta for N in {1, 7, 128}, dx == x (in place),
/// either output skipped, N = 0 (dtheta = 0).
template <class T, class Policy>
void check_layer_backward(int terms, const std::vector<Index>& block_sizes, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  Rng rng(seed);
  for (Index b : block_sizes)
    for (bool shared : {false, true}) {
      const OpConfig config{kLayerBlocks, b, shared, terms};
      const Index d = config.features(), m = config.packed(), gens = config.generators();
      SCOPED_TRACE(describe(config) + " " + type_name<T>());
      GpuLayer<T, Policy> l(config, random_theta<P>(config, 0.6, rng),
                            random_values<T>(kOutputs * d, rng), random_values<T>(kOutputs, rng));
      const std::vector<double> thetad = to_double(l.theta), w0d = to_double(l.w0);
      const std::vector<double> blocks = cpu_rotation_blocks<double>(config, thetad);
      const std::vector<double> rho = row_rho_bounds(config, l.theta);
      const std::vector<double> rt = rotation_tolerances(config, rho, eps_of<P>());
      struct Case {
        Index n;
        bool in_place, want_dx, want_dtheta;
      };
      for (const Case c : {Case{0, false, true, true}, Case{1, false, true, true},
                           Case{7, false, true, true}, Case{128, false, true, true},
                           Case{128, true, true, true}, Case{7, false, false, true},
                           Case{7, false, true, false}}) {
        const Index n = c.n;
        SCOPED_TRACE("backward N=" + std::to_string(n) + (c.in_place ? " dx==x" : "") +
                     (c.want_dx ? "" : " no dx") + (c.want_dtheta ? "" : " no dtheta"));
        const std::vector<T> x = random_values<T>(n * d, rng);
        const std::vector<T> dz = random_values<T>(n * kOutputs, rng);
        const std::vector<double> xd = to_double(x), dzd = to_double(dz);
        DeviceArray<T> x_dev(x), dz_dev(dz);
        const T sentinel = from_double<T>(-123.0);
        DeviceArray<T> dx_dev(std::vector<T>(static_cast<std::size_t>(n * d), sentinel));
        DeviceArray<P> dtheta_dev(std::vector<P>(static_cast<std::size_t>(gens * m), P(-123)));
        const oft::DeviceMatrixView<T> x_view(x_dev.data(), n, d);
        oft::DeviceMatrixView<T> dx_view;
        if (c.want_dx) dx_view = c.in_place ? x_view : oft::DeviceMatrixView<T>(dx_dev.data(), n, d);
        const oft::DeviceMatrixView<P> dtheta_view =
            c.want_dtheta ? oft::DeviceMatrixView<P>(dtheta_dev.data(), gens, m)
                          : oft::DeviceMatrixView<P>();
        const std::size_t bytes = l.layer.workspace_bytes(n);
        DeviceArray<unsigned char> workspace(bytes);
        l.layer.backward(x_view, oft::DeviceMatrixView<const T>(dz_dev.data(), n, kOutputs),
                         dx_view, dtheta_view, workspace.data(), bytes, nullptr);
        sync_device("backward");
        std::vector<double> dx_ref, dtheta_ref;
        cpu_layer_backward<double>(config, thetad, w0d, kOutputs, xd, dzd, n, &dx_ref,
                                   &dtheta_ref);

        const LayerBackwardBounds bounds =
            layer_backward_bounds<T>(config, xd, dzd, n, blocks, rt, rho, w0d, dx_ref);
        if (c.want_dx) {
          const std::vector<T> dx = c.in_place ? x_dev.download() : dx_dev.download();
          EXPECT_TRUE(within_bound(to_double(dx), dx_ref, bounds.dx, d)) << "dX";
        } else {
          EXPECT_TRUE(bitwise_equal(dx_dev.download(),
                                    std::vector<T>(static_cast<std::size_t>(n * d), sentinel)));
          EXPECT_TRUE(bitwise_equal(x_dev.download(), x)) << "x modified";
        }
        if (c.want_dtheta) {
          EXPECT_TRUE(rows_within(to_double(dtheta_dev.download()), dtheta_ref, m, bounds.dtheta))
              << "dtheta";
        } else {
          EXPECT_TRUE(bitwise_equal(dtheta_dev.download(),
                                    std::vector<P>(static_cast<std::size_t>(gens * m), P(-123))));
        }
        EXPECT_TRUE(bitwise_equal(dz_dev.download(), dz)) << "dz modified";
      }
    }
}

/// merge against the CPU layer's merged(), and unmerge(merge(W0)) == W0 (into a separate buffer
/// and in place), for orthogonal and visibly non-orthogonal R (the CPU suite's cases).
template <class T>
void check_merge_unmerge(const std::vector<Index>& block_sizes, std::uint64_t seed) {
  using P = oft::cuda_parameter_t<T>;
  Rng rng(seed);
  struct Case {
    int terms;
    double rho;
    bool non_orthogonal;
  };
  for (Index b : block_sizes)
    for (bool shared : {false, true})
      for (const Case c : {Case{kExactCayley, 0.6, false}, Case{kExactCayley, 3.0, false},
                           Case{1, 0.9, true}, Case{4, 0.5, false}}) {
        const OpConfig config{kLayerBlocks, b, shared, c.terms};
        const Index d = config.features();
        SCOPED_TRACE(describe(config) + " rho=" + std::to_string(c.rho) + " " + type_name<T>());
        const std::vector<P> theta = random_theta_with_rho<P>(config, c.rho, rng);
        const std::vector<T> w0 = random_values<T>(kOutputs * d, rng);
        auto run = [&](auto policy) {
          using Policy = decltype(policy);
          (void)policy;
          GpuLayer<T, Policy> l(config, theta, w0, {});
          const std::vector<double> thetad = to_double(theta), w0d = to_double(w0);
          const std::vector<double> blocks = cpu_rotation_blocks<double>(config, thetad);
          const std::vector<double> rt =
              rotation_tolerances(config, row_rho_bounds(config, theta), eps_of<P>());

          DeviceArray<T> merged(static_cast<std::size_t>(kOutputs * d));
          const oft::DeviceMatrixView<T> merged_view(merged.data(), kOutputs, d);
          l.layer.merge(merged_view, nullptr);
          sync_device("merge");
          const std::vector<double> merged_ref = cpu_layer_merge<double>(config, thetad, w0d, kOutputs);
          const ApplyMagnitudes mag = apply_magnitudes(config, {}, w0d, kOutputs, blocks, rt, true);
          EXPECT_TRUE(within_bound(to_double(merged.download()), merged_ref,
                                   apply_bound<T>(mag, merged_ref, b), d))
              << "merge";

          const std::vector<double> cond = cpu_condition_numbers(config, blocks);
          auto check_back = [&](const std::vector<T>& back, const char* what) {
            const std::vector<double> backd = to_double(back);
            for (Index i = 0; i < config.blocks; ++i) {
              double err = 0.0, norm = 0.0;
              for (Index o = 0; o < kOutputs; ++o)
                for (Index j = 0; j < b; ++j) {
                  const std::size_t at = static_cast<std::size_t>(o * d + i * b + j);
                  err += (backd[at] - w0d[at]) * (backd[at] - w0d[at]);
                  norm += w0d[at] * w0d[at];
                }
              const double k = cond[static_cast<std::size_t>(config.generator_of(i))];
              const double tol = unmerge_bound<T>(b, k, std::sqrt(norm));
              EXPECT_LE(std::sqrt(err), tol) << what << " block " << i << " cond " << k;
            }
          };
          DeviceArray<T> back(static_cast<std::size_t>(kOutputs * d));
          l.layer.unmerge(merged_view, oft::DeviceMatrixView<T>(back.data(), kOutputs, d), nullptr);
          check_back(back.download(), "unmerge");
          l.layer.unmerge(merged_view, merged_view, nullptr);  // in place
          check_back(merged.download(), "unmerge in place");

          if (c.non_orthogonal && b > 1) {
            // The orthogonal shortcut W' R would be wrong here, so the check above can tell a
            // true inverse from a transpose.
            double diff = 0.0, norm = 0.0;
            for (Index o = 0; o < kOutputs; ++o)
              for (Index i = 0; i < config.blocks; ++i) {
                const double* r = blocks.data() + config.generator_of(i) * b * b;
                for (Index j = 0; j < b; ++j) {
                  double s = 0.0;
                  for (Index k = 0; k < b; ++k)
                    s += merged_ref[static_cast<std::size_t>(o * d + i * b + k)] * r[k * b + j];
                  const double w = w0d[static_cast<std::size_t>(o * d + i * b + j)];
                  diff += (s - w) * (s - w);
                  norm += w * w;
                }
              }
            EXPECT_GT(std::sqrt(diff), 0.1 * std::sqrt(norm));
          }
        };
        if (config.exact())
          run(oft::ExactCayley{});
        else
          run(oft::CayleyNeumann{c.terms});
      }
}

}  // namespace oft_cuda_test
