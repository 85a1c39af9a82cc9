#pragma once
/// \file cuda_test_support.cuh
/// Shared helpers of the CUDA test suite (nvcc only; no Eigen): skipping without a GPU, RAII
/// device memory and streams, deterministic test data in every activation type, the rounding
/// constants of each type, the magnitude matrices the tolerances are built from, and comparison
/// predicates that report the worst entry.
///
/// Tolerance policy (as in tests/test_support.hpp): a bound is either a rigorous rounding-error
/// bound (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed.: unit roundoff u,
/// gamma_n = n u / (1 - n u); a length-n dot product in any order satisfies
/// |fl(x.y) - x.y| <= gamma_n |x|.|y|, eq. 3.5), or `c * n * eps * scale` with a stated small c
/// where no rigorous bound is practical (LU solves, the Horner evaluation of R). Every GPU result
/// is compared with oft's CPU backend (cpu_reference.hpp) on the same inputs; no tolerance is
/// tuned to make a test pass.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <oft/cuda.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_reference.hpp"

namespace oft_cuda_test {

// ---------------------------------------------------------------------------------------------
// Skipping without a GPU. Nothing here runs at static-initialization time, so
// `--gtest_list_tests` (ctest's test discovery) never touches CUDA.
// ---------------------------------------------------------------------------------------------

/// Empty when a CUDA device is usable, else why not (the CUDA runtime's error). Queried once.
inline const std::string& device_unavailable_reason() {
  static const std::string reason = oft::cuda_device_unavailable_reason();
  return reason;
}

/// Base fixture of every CUDA test: skips the test (with the reason) when there is no device.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string& reason = device_unavailable_reason();
    if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
  }
};

// ---------------------------------------------------------------------------------------------
// RAII: device arrays and streams.
// ---------------------------------------------------------------------------------------------

/// Throws std::runtime_error for a failed CUDA call made by the test itself (GoogleTest reports
/// an exception escaping a test as a failure naming it).
inline void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("test: ") + what + " failed: " +
                             cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

/// Waits for all device work and surfaces any asynchronous kernel error.
inline void sync_device(const char* what = "cudaDeviceSynchronize") {
  cuda_check(cudaDeviceSynchronize(), what);
  cuda_check(cudaGetLastError(), what);
}

/// Device copy of a host vector (oft::DeviceBuffer for the memory, synchronous cudaMemcpy).
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t count = 0) : buffer_(count) {}
  explicit DeviceArray(const std::vector<T>& host) : buffer_(host.size()) { upload(host); }

  T* data() const { return buffer_.data(); }
  std::size_t size() const { return buffer_.size(); }

  void upload(const std::vector<T>& host) {
    if (host.size() != size()) throw std::invalid_argument("test: DeviceArray::upload size");
    if (!host.empty())
      cuda_check(cudaMemcpy(data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                 "cudaMemcpy H2D");
  }
  std::vector<T> download() const {
    std::vector<T> host(size());
    if (!host.empty())
      cuda_check(cudaMemcpy(host.data(), data(), host.size() * sizeof(T), cudaMemcpyDeviceToHost),
                 "cudaMemcpy D2H");
    return host;
  }

 private:
  oft::DeviceBuffer<T> buffer_;
};

/// A rows x cols row-major matrix with leading dimension ld >= cols in device memory, starting
/// `offset` elements into its allocation (a base pointer that is not 16-byte aligned exercises
/// the kernels' unaligned paths). The ld - cols padding elements of every row and the `offset`
/// leading elements hold `pad` (checked untouched after a call).
template <class T>
class DeviceMatrix {
 public:
  DeviceMatrix(const std::vector<T>& dense, Index rows, Index cols, Index ld, T pad,
               Index offset = 0)
      : rows_(rows), cols_(cols), ld_(ld), offset_(offset), pad_(pad),
        storage_(static_cast<std::size_t>(offset + rows * ld)) {
    if (static_cast<Index>(dense.size()) != rows * cols || ld < cols || offset < 0)
      throw std::invalid_argument("test: DeviceMatrix shape");
    std::vector<T> host(storage_.size(), pad);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j)
        host[static_cast<std::size_t>(offset + i * ld + j)] =
            dense[static_cast<std::size_t>(i * cols + j)];
    storage_.upload(host);
  }

  T* data() const { return rows_ * ld_ > 0 ? storage_.data() + offset_ : nullptr; }
  oft::DeviceMatrixView<T> view() const {
    return oft::DeviceMatrixView<T>(data(), rows_, cols_, ld_);
  }
  oft::DeviceMatrixView<const T> cview() const {
    return oft::DeviceMatrixView<const T>(data(), rows_, cols_, ld_);
  }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index ld() const { return ld_; }

  /// The rows x cols values (padding dropped).
  std::vector<T> dense() const {
    const std::vector<T> host = storage_.download();
    std::vector<T> out(static_cast<std::size_t>(rows_ * cols_));
    for (Index i = 0; i < rows_; ++i)
      for (Index j = 0; j < cols_; ++j)
        out[static_cast<std::size_t>(i * cols_ + j)] =
            host[static_cast<std::size_t>(offset_ + i * ld_ + j)];
    return out;
  }

  /// Success iff every padding element (row tails and the leading offset) still holds `pad`,
  /// bit for bit.
  ::testing::AssertionResult padding_intact() const {
    const std::vector<T> host = storage_.download();
    for (Index e = 0; e < static_cast<Index>(host.size()); ++e) {
      const Index inside = e - offset_;
      const bool is_value = inside >= 0 && inside % ld_ < cols_;
      if (!is_value && std::memcmp(&host[static_cast<std::size_t>(e)], &pad_, sizeof(T)) != 0)
        return ::testing::AssertionFailure()
               << "padding element " << e << " of the allocation (offset " << offset_ << ", ld "
               << ld_ << ", " << cols_ << " columns) was overwritten";
    }
    return ::testing::AssertionSuccess();
  }

 private:
  Index rows_, cols_, ld_, offset_;
  T pad_;
  DeviceArray<T> storage_;
};

/// A non-blocking CUDA stream.
class Stream {
 public:
  Stream() { cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream"); }
  ~Stream() { (void)cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  void sync() const { cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

 private:
  cudaStream_t stream_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Activation types: names, conversions, rounding constants.
// ---------------------------------------------------------------------------------------------

template <class T>
std::string type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, double>) return "double";
  if constexpr (std::is_same_v<T, __half>) return "half";
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bfloat16";
  return "?";
}

inline double to_double(float v) { return static_cast<double>(v); }
inline double to_double(double v) { return v; }
inline double to_double(__half v) { return static_cast<double>(__half2float(v)); }
inline double to_double(__nv_bfloat16 v) { return static_cast<double>(__bfloat162float(v)); }

/// v rounded to T (to nearest).
template <class T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(static_cast<float>(v));
  else
    return static_cast<T>(v);
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = to_double(v[i]);
  return out;
}
template <class T>
std::vector<T> from_double(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = from_double<T>(v[i]);
  return out;
}

/// Rounding constants of T: eps (spacing at 1), unit roundoff u = eps / 2 (round to nearest),
/// and eta = half the smallest subnormal (the absolute error floor of rounding to T near zero).
template <class T>
struct Rounding;
template <>
struct Rounding<double> {
  static constexpr double eps = 0x1.0p-52;
  static constexpr double eta = 0.0;  // 2^-1075 underflows; never relevant at these magnitudes
};
template <>
struct Rounding<float> {
  static constexpr double eps = 0x1.0p-23;
  static constexpr double eta = 0x1.0p-150;
};
template <>
struct Rounding<__half> {
  static constexpr double eps = 0x1.0p-10;
  static constexpr double eta = 0x1.0p-25;
};
template <>
struct Rounding<__nv_bfloat16> {
  static constexpr double eps = 0x1.0p-7;
  static constexpr double eta = 0x1.0p-134;
};
template <class T>
constexpr double eps_of() {
  return Rounding<T>::eps;
}
template <class T>
constexpr double unit_roundoff() {
  return Rounding<T>::eps / 2.0;
}

/// Higham's gamma_n = n u / (1 - n u) for unit roundoff u.
inline double gamma_u(Index n, double u) {
  const double nu = static_cast<double>(n) * u;
  return nu / (1.0 - nu);
}
template <class T>
double gamma(Index n) {
  return gamma_u(n, unit_roundoff<T>());
}

// ---------------------------------------------------------------------------------------------
// Deterministic test data (SplitMix64, as tests/test_support.hpp; no std distributions).
// ---------------------------------------------------------------------------------------------
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t bits() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [-1, 1).
  double uniform() { return static_cast<double>(bits() >> 11) * 0x1.0p-52 - 1.0; }
  Index index(Index n) { return static_cast<Index>(bits() % static_cast<std::uint64_t>(n)); }

 private:
  std::uint64_t state_;
};

/// rows x cols values uniform in [-1, 1), rounded to T: the returned T values are exactly
/// representable, so their double image (to_double) is the same input for the CPU reference.
template <class T>
std::vector<T> random_values(Index count, Rng& rng) {
  std::vector<T> out(static_cast<std::size_t>(count));
  for (T& v : out) v = from_double<T>(rng.uniform());
  return out;
}

/// Packed generators (config.generators() x config.packed()) with every row scaled to
/// ||theta_row||_2 = row_norm (= ||Q||_F / sqrt 2, an upper bound of rho = ||Q||_2), rounded
/// to P.
template <class P>
std::vector<P> random_theta(const OpConfig& config, double row_norm, Rng& rng) {
  const Index m = config.packed();
  std::vector<P> out(static_cast<std::size_t>(config.generators() * m));
  for (Index g = 0; g < config.generators(); ++g) {
    std::vector<double> row(static_cast<std::size_t>(m));
    double squares = 0.0;
    for (double& v : row) {
      v = rng.uniform();
      squares += v * v;
    }
    const double scale = squares > 0.0 ? row_norm / std::sqrt(squares) : 0.0;
    for (Index k = 0; k < m; ++k)
      out[static_cast<std::size_t>(g * m + k)] =
          static_cast<P>(row[static_cast<std::size_t>(k)] * scale);
  }
  return out;
}

/// Packed generators whose rows have exactly ||Q_g||_2 = rho (computed in double by the CPU
/// reference, then rounded to P).
template <class P>
std::vector<P> random_theta_with_rho(const OpConfig& config, double rho, Rng& rng) {
  std::vector<double> theta = to_double(random_theta<double>(config, 1.0, rng));
  const std::vector<double> norms = cpu_generator_rho(config, theta);
  const Index m = config.packed();
  for (Index g = 0; g < config.generators(); ++g)
    for (Index k = 0; k < m; ++k)
      if (norms[static_cast<std::size_t>(g)] > 0.0)
        theta[static_cast<std::size_t>(g * m + k)] *= rho / norms[static_cast<std::size_t>(g)];
  std::vector<P> out(theta.size());
  for (std::size_t i = 0; i < theta.size(); ++i) out[i] = static_cast<P>(theta[i]);
  return out;
}

/// ||theta_row_g||_2 of every generator: an upper bound of rho_g = ||Q_g||_2.
template <class P>
std::vector<double> row_rho_bounds(const OpConfig& config, const std::vector<P>& theta) {
  const Index m = config.packed();
  std::vector<double> out(static_cast<std::size_t>(config.generators()));
  for (Index g = 0; g < config.generators(); ++g) {
    double squares = 0.0;
    for (Index k = 0; k < m; ++k) {
      const double v = to_double(theta[static_cast<std::size_t>(g * m + k)]);
      squares += v * v;
    }
    out[static_cast<std::size_t>(g)] = std::sqrt(squares);
  }
  return out;
}

/// A mask with at least one inactive and (when r >= 2) one active block.
inline std::vector<unsigned char> random_mask(Index blocks, Rng& rng) {
  std::vector<unsigned char> mask(static_cast<std::size_t>(blocks));
  for (auto& m : mask) m = static_cast<unsigned char>(rng.index(2));
  mask[0] = 0;
  if (blocks >= 2) mask[static_cast<std::size_t>(blocks - 1)] = 1;
  return mask;
}

inline bool block_active(const std::vector<unsigned char>& active, Index i) {
  return active.empty() || active[static_cast<std::size_t>(i)] != 0;
}

// ---------------------------------------------------------------------------------------------
// Scales of the bounds (the same functions as tests/test_support.hpp).
// ---------------------------------------------------------------------------------------------

/// P(rho) = sum_j c_j rho^j, c = 1, 2, ..., 2, 1: bounds ||R_k||_2 and the Horner intermediates.
inline double neumann_scale(double rho, int k) {
  double p = 0.0;
  for (int j = 0; j <= k + 1; ++j) p += (j == 0 || j == k + 1 ? 1.0 : 2.0) * std::pow(rho, j);
  return p;
}
/// P'(rho) (at least 1): bounds how the Neumann VJP amplifies an error in G.
inline double neumann_derivative_scale(double rho, int k) {
  double p = 0.0;
  for (int j = 1; j <= k + 1; ++j) p += (j == k + 1 ? 1.0 : 2.0) * j * std::pow(rho, j - 1);
  return std::max(1.0, p);
}
/// Exact Cayley VJP dQ = (I + R)^T G (I - Q)^-T: ||I + R|| <= 2, ||(I - Q)^-1|| <= 1, times
/// cond(I - Q) = sqrt(1 + rho^2) for the solve's rounding.
inline double cayley_derivative_scale(double rho) { return 2.0 * std::sqrt(1.0 + rho * rho); }

inline double derivative_scale(const OpConfig& config, double rho) {
  return config.exact() ? cayley_derivative_scale(rho) : neumann_derivative_scale(rho, config.terms);
}

/// Max-entry distance between two evaluations of R_g = f(Q_g) in a precision with epsilon
/// `eps` (the CPU suite's bound, c * n * eps * scale form):
///  - Neumann: Horner does k + 1 products of b x b matrices whose intermediates are bounded by
///    P(rho) (neumann_scale); each product adds at most gamma_b relative to those magnitudes, so
///    one evaluation errs by about (k + 1) b u P(rho); two evaluations and c = 2 give
///    2 (k + 2) b eps P(rho).
///  - Exact Cayley: a solve with I - Q (cond_2 = sqrt(1 + rho^2), ||R||_2 = 1), c = 4:
///    4 b eps sqrt(1 + rho^2).
inline double rotation_tolerance(const OpConfig& config, double rho, double eps) {
  const double b = static_cast<double>(config.b);
  if (config.exact()) return 4.0 * b * eps * std::sqrt(1.0 + rho * rho);
  return 2.0 * (config.terms + 2) * b * eps * neumann_scale(rho, config.terms);
}

inline std::vector<double> rotation_tolerances(const OpConfig& config,
                                               const std::vector<double>& rho, double eps) {
  std::vector<double> out(rho.size());
  for (std::size_t g = 0; g < rho.size(); ++g) out[g] = rotation_tolerance(config, rho[g], eps);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Magnitudes the bounds are made of (all in double, n x d, row-major).
// ---------------------------------------------------------------------------------------------

/// For Y = X * R (or X * R^T when transposed), per output entry (t, j) of block i with
/// generator g, over the block's b columns k:
///   mag(t, j)  = sum_k |X(t, k)| (|R_g(k, j)| + rt_g)   (the |X| |R'| of the dot product; |R'|
///                                                         covers either evaluation of R)
///   sum(t, j)  = sum_k |X(t, k)|
///   rows(t, j) = rt_g * sum(t, j)                          (what an error rt_g in R can add)
/// An inactive block is the identity: mag = |X(t, j)|, sum = rows = 0 (no rotation involved).
struct ApplyMagnitudes {
  std::vector<double> mag, sum, rows;
};
inline ApplyMagnitudes apply_magnitudes(const OpConfig& config,
                                        const std::vector<unsigned char>& active,
                                        const std::vector<double>& x, Index n,
                                        const std::vector<double>& blocks,
                                        const std::vector<double>& rt, bool transposed) {
  const Index b = config.b, d = config.features();
  const std::size_t size = static_cast<std::size_t>(n * d);
  ApplyMagnitudes out{std::vector<double>(size, 0.0), std::vector<double>(size, 0.0),
                      std::vector<double>(size, 0.0)};
  for (Index i = 0; i < config.blocks; ++i) {
    const Index g = config.generator_of(i);
    const double* r = blocks.data() + g * b * b;
    const double tol = rt[static_cast<std::size_t>(g)];
    const bool on = block_active(active, i);
    for (Index t = 0; t < n; ++t) {
      const double* xr = x.data() + t * d + i * b;
      double row_sum = 0.0;
      for (Index k = 0; k < b; ++k) row_sum += std::abs(xr[k]);
      for (Index j = 0; j < b; ++j) {
        const std::size_t at = static_cast<std::size_t>(t * d + i * b + j);
        if (!on) {
          out.mag[at] = std::abs(xr[j]);
          continue;
        }
        double s = 0.0;
        for (Index k = 0; k < b; ++k) {
          const double rkj = transposed ? r[j * b + k] : r[k * b + j];
          s += std::abs(xr[k]) * (std::abs(rkj) + tol);
        }
        out.mag[at] = s;
        out.sum[at] = row_sum;
        out.rows[at] = tol * row_sum;
      }
    }
  }
  return out;
}

/// Entrywise bound for Y = X R (or X R^T) computed on the GPU in T against the CPU reference in
/// double, for inputs exactly representable in T.
///
/// float / double: GPU and reference are each within gamma_b |X| |R'| of X R_their own (Higham
/// eq. 3.5; for T = float the double reference's share is far smaller), and
/// |R_gpu - R_ref| <= rt entrywise, so |gpu - ref| <= 2 gamma_b(T) mag + rows.
///
/// 16-bit T (numeric.hpp, kernels_tensor_core.hpp): the GPU forms a = sum_k x_k R_kj in fp32
/// from exact 16-bit x and fp32 R (CUDA cores) or from R_hi + R_lo (tensor cores, R_hi = T(R),
/// R_lo = T(R - R_hi)), then rounds a to T once. The error e of a (apply_error) is
///   gamma_{2b}(u = eps_f) mag     fp32 accumulation of <= 2b exact products; u = eps_f rather
///                                 than eps_f / 2 because tensor-core accumulation is not
///                                 guaranteed to round to nearest
///   + u_T^2 mag + 2 eta_T sum     R - R_hi - R_lo (<= u_T |R - R_hi| + eta_T), with the
///                                 subnormal floor of both roundings
///   + rows                        fp32 R against the reference R (rotation_tolerance)
///   + gamma_b(double) mag         the reference's own rounding
/// and |fl_T(a) - a| <= u_T |a| + eta_T <= u_T (|y_ref| + e) + eta_T, so
///   |gpu - ref| <= u_T (|y_ref| + e) + eta_T + e:
/// half an ulp of T at the value plus the fp32-level error e (orders of magnitude below
/// u_T |y|); rigorous for round-to-nearest stores.
template <class T>
double apply_error(const ApplyMagnitudes& m, std::size_t e, Index b) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return 2.0 * gamma<T>(b) * m.mag[e] + m.rows[e];
  } else {
    const double uT = unit_roundoff<T>();
    const double acc = gamma_u(2 * b, eps_of<float>()) + uT * uT + gamma<double>(b);
    return acc * m.mag[e] + m.rows[e] + 2.0 * Rounding<T>::eta * m.sum[e];
  }
}

template <class T>
std::vector<double> apply_bound(const ApplyMagnitudes& m, const std::vector<double>& reference,
                                Index b) {
  std::vector<double> out(m.mag.size());
  for (std::size_t e = 0; e < out.size(); ++e) {
    const double err = apply_error<T>(m, e, b);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
      out[e] = err;
    else
      out[e] = unit_roundoff<T>() * (std::abs(reference[e]) + err) + Rounding<T>::eta + err;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Comparison predicates.
// ---------------------------------------------------------------------------------------------

/// |actual - expected| <= bound entrywise (n x cols row-major); reports the worst entry.
inline ::testing::AssertionResult within_bound(const std::vector<double>& actual,
                                               const std::vector<double>& expected,
                                               const std::vector<double>& bound, Index cols) {
  if (actual.size() != expected.size() || bound.size() != actual.size())
    return ::testing::AssertionFailure() << "size mismatch: " << actual.size() << " vs "
                                         << expected.size() << " (bound " << bound.size() << ")";
  std::size_t worst = actual.size();
  double worst_ratio = 0.0;
  for (std::size_t e = 0; e < actual.size(); ++e) {
    const double err = std::abs(actual[e] - expected[e]);
    if (!(err <= bound[e])) {  // also catches NaN
      const double ratio =
          bound[e] > 0.0 ? err / bound[e] : std::numeric_limits<double>::infinity();
      if (worst == actual.size() || !(ratio <= worst_ratio)) {
        worst = e;
        worst_ratio = ratio;
      }
    }
  }
  if (worst == actual.size()) return ::testing::AssertionSuccess();
  std::ostringstream out;
  out.precision(17);
  const Index c = std::max<Index>(cols, 1);
  out << "entry (" << static_cast<Index>(worst) / c << "," << static_cast<Index>(worst) % c
      << "): actual " << actual[worst] << ", expected " << expected[worst] << ", |error| "
      << std::abs(actual[worst] - expected[worst]) << " > bound " << bound[worst] << " (ratio "
      << worst_ratio << ")";
  return ::testing::AssertionFailure() << out.str();
}

/// ||actual_g - expected_g||_2 <= tol_g for every row g of a generators x m matrix.
inline ::testing::AssertionResult rows_within(const std::vector<double>& actual,
                                              const std::vector<double>& expected, Index m,
                                              const std::vector<double>& tol) {
  if (actual.size() != expected.size() ||
      static_cast<Index>(actual.size()) != m * static_cast<Index>(tol.size()))
    return ::testing::AssertionFailure() << "size mismatch";
  for (std::size_t g = 0; g < tol.size(); ++g) {
    double err = 0.0, norm = 0.0;
    for (Index k = 0; k < m; ++k) {
      const std::size_t at = g * static_cast<std::size_t>(m) + static_cast<std::size_t>(k);
      err += (actual[at] - expected[at]) * (actual[at] - expected[at]);
      norm += expected[at] * expected[at];
    }
    err = std::sqrt(err);
    if (!(err <= tol[g]))
      return ::testing::AssertionFailure()
             << "generator " << g << ": ||error||_2 = " << err << " > bound " << tol[g]
             << " (||expected||_2 = " << std::sqrt(norm) << ")";
  }
  return ::testing::AssertionSuccess();
}

/// Bit-for-bit equality of two arrays of T.
template <class T>
::testing::AssertionResult bitwise_equal(const std::vector<T>& actual,
                                         const std::vector<T>& expected) {
  if (actual.size() != expected.size())
    return ::testing::AssertionFailure()
           << "size mismatch: " << actual.size() << " vs " << expected.size();
  for (std::size_t e = 0; e < actual.size(); ++e)
    if (std::memcmp(&actual[e], &expected[e], sizeof(T)) != 0)
      return ::testing::AssertionFailure() << "element " << e << ": " << to_double(actual[e])
                                           << " differs from " << to_double(expected[e]);
  return ::testing::AssertionSuccess();
}

/// Runs `f` and succeeds iff it throws exactly an `Exception` whose what() contains every
/// string of `parts` (the values at fault).
template <class Exception, class F>
::testing::AssertionResult throws_with(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const Exception& e) {
    const std::string what = e.what();
    for (const std::string& part : parts)
      if (what.find(part) == std::string::npos)
        return ::testing::AssertionFailure()
               << "message \"" << what << "\" does not contain \"" << part << "\"";
    return ::testing::AssertionSuccess() << what;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw the wrong exception type: " << e.what();
  } catch (...) {
    return ::testing::AssertionFailure() << "threw a non-std exception";
  }
  return ::testing::AssertionFailure() << "did not throw";
}

/// The policy object of a configuration, as the GPU operator type needs it.
template <class Policy>
Policy make_policy(const OpConfig& config) {
  if constexpr (std::is_same_v<Policy, oft::ExactCayley>)
    return oft::ExactCayley{};
  else
    return oft::CayleyNeumann{config.terms};
}

inline oft::BlockSpec spec_of(const OpConfig& config) {
  return oft::BlockSpec{config.blocks, config.b, config.shared};
}

inline std::string describe(const OpConfig& config) {
  std::ostringstream out;
  out << (config.exact() ? std::string("ExactCayley")
                         : "CayleyNeumann{" + std::to_string(config.terms) + "}")
      << " r=" << config.blocks << " b=" << config.b << (config.shared ? " shared" : " unshared");
  return out.str();
}

}  // namespace oft_cuda_test
