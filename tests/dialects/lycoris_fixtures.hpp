#pragma once
// The LyCORIS fixtures of make_fixtures.py, and the float rounding bound the parity tests hold
// oft to.
//
// The bound, per element, derived before looking at any difference (u = 2^-24, float's unit
// roundoff). Both sides compute W' = diag(r) M^T W, M = s R + (1 - s) I, block by block, in
// float. For the entry (i, j) of block beta (b rows):
//   - R = (I + Q)(I - Q)^-1 by an LU solve (oft) or an explicit inverse then a product
//     (LyCORIS): a forward error of at most about 2b u kappa in norm, kappa = cond(I - Q) =
//     sqrt(1 + rho^2) <= sqrt(1 + ||Q_beta||_F^2) (the F-norm is used: a bound that needs no
//     eigenvalues);
//   - (M^T w)_i, w the block's column j: b products and sums, b u ||w||_2 (|M| columns have
//     norm <= |s| + |1 - s| since R's columns have norm 1);
//   - the blend, the rescale and LyCORIS's s = 1 form W + r (R - I)^T W + (r - 1) W: a few
//     roundings of values up to (1 + 2|r| + |r - 1|) (|s| + |1 - s|) ||w||_2.
// So each side is within (4b + 8) u kappa (|s| + |1 - s|) (1 + 2|r_i| + |r_i - 1|) ||w||_2 of the
// exact value, and the two within twice that. The forward adds the base GEMM X W^T (in terms,
// (in) u (|X| |W|^T)) and the bias: w is replaced by the block's (|X| |W|^T)_t (plus |bias| in
// bypass mode, where the bias is rotated) and the constant 4b + 8 by in + 4b + 8, plus 2u |bias|.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/lycoris.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <oft/io/lycoris_adapter.hpp>
#include <oft/io/safetensors_reader.hpp>

#ifndef OFT_DIALECTS_FIXTURES_DIR
#error "tests/dialects/CMakeLists.txt defines OFT_DIALECTS_FIXTURES_DIR"
#endif

namespace oft_dialects_test {

namespace fs = std::filesystem;
using Matrix = oft::RowMatrix<float>;
using MatrixD = oft::RowMatrix<double>;

inline fs::path fixture(const std::string& name) { return fs::path(OFT_DIALECTS_FIXTURES_DIR) / name; }

/// The fixture stems: LyCORIS's (saved and computed by lycoris-lora) and kohya's (made by
/// make_fixtures.py's reference of kohya's formulas, with kohya's key names).
inline const std::vector<std::string>& fixture_cases() {
  static const std::vector<std::string> cases{"lycoris_plain_b4",  "lycoris_constrained_b8",
                                              "lycoris_rescaled_b4", "lycoris_bypass_b4",
                                              "lycoris_bypass_rescaled_b8", "kohya_k4", "kohya_alpha0"};
  return cases;
}

/// One case: the adapter file, and what its owner computed (make_fixtures.py's layout).
struct LycorisCase {
  std::string name;
  oft::io::LycorisAdapter adapter;
  oft::io::SafetensorsFile expected;
  nlohmann::json meta;  // the expected file's metadata, each value parsed as JSON

  static LycorisCase load(const std::string& stem) {
    LycorisCase c{stem, oft::io::LycorisAdapter::load(fixture(stem + ".safetensors")),
                  oft::io::SafetensorsFile::open(fixture(stem + "_expected.safetensors")),
                  nlohmann::json::object()};
    for (const auto& [key, value] : c.expected.metadata())
      c.meta[key] = (key == "lycoris_version" || key == "torch_version" || key == "reference" || key == "model")
                        ? nlohmann::json(value)
                        : nlohmann::json::parse(value);
    return c;
  }
  bool kohya() const { return name.rfind("kohya", 0) == 0; }
  std::vector<std::string> modules() const { return meta.at("modules").get<std::vector<std::string>>(); }
  std::vector<double> multipliers() const { return meta.at("multipliers").get<std::vector<double>>(); }
  bool bypass() const { return meta.contains("case") && meta.at("case").at("bypass_mode").get<bool>(); }
  bool has(const std::string& key) const { return expected.contains(key); }
  Matrix matrix(const std::string& key) const {
    const oft::io::TensorView t = expected.tensor(key);
    EXPECT_EQ(t.shape.size(), 2u) << key;
    Matrix m(static_cast<oft::Index>(t.shape[0]), static_cast<oft::Index>(t.shape[1]));
    const std::vector<float> v = t.copy_as<float>();
    std::copy(v.begin(), v.end(), m.data());
    return m;
  }
  /// A weight of any rank as [dim 0, the rest] (a conv kernel [out, in, kh, kw] -> [out, in kh kw]).
  Matrix flat(const std::string& key) const {
    const oft::io::TensorView t = expected.tensor(key);
    const auto rows = static_cast<oft::Index>(t.shape.at(0));
    const std::vector<float> v = t.copy_as<float>();
    Matrix m(rows, static_cast<oft::Index>(v.size()) / rows);
    std::copy(v.begin(), v.end(), m.data());
    return m;
  }
  std::vector<float> vector(const std::string& key) const { return expected.tensor(key).copy_as<float>(); }
  const oft::io::LycorisDiagOftModule& module(const std::string& path) const {
    return adapter.module(oft::io::LycorisAdapter::module_name(path, kohya() ? "oft_unet" : "lycoris"));
  }
};

constexpr double kUnitRoundoff = 0x1p-24;  // float

/// kappa bound per block: sqrt(1 + ||Q_beta||_F^2) of the constrained generators.
inline std::vector<double> block_kappas(const oft::lycoris::DiagOft<float>& op) {
  std::vector<double> out;
  const auto& theta = op.generators();
  for (oft::Index g = 0; g < theta.count(); ++g) {
    double sum = 0.0;
    for (oft::Index k = 0; k < theta.packed(); ++k) sum += 2.0 * double(theta.row(g)[k]) * double(theta.row(g)[k]);
    out.push_back(std::sqrt(1.0 + sum));
  }
  return out;
}

inline double rescale_factor(const std::vector<float>& rescale, oft::Index i) {
  if (rescale.empty()) return 3.0;  // r = 1
  const double r = rescale[static_cast<std::size_t>(i)];
  return 1.0 + 2.0 * std::abs(r) + std::abs(r - 1.0);
}

/// The merge bound of the file comment, per element of W' (out x cols).
inline MatrixD merge_tolerance(const oft::lycoris::DiagOft<float>& op, const Matrix& w) {
  const oft::Index b = op.spec().block_size;
  const std::vector<double> kappa = block_kappas(op);
  const double s = op.multiplier();
  const double cs = std::abs(s) + std::abs(1.0 - s);
  MatrixD tol(w.rows(), w.cols());
  for (oft::Index beta = 0; beta < op.spec().blocks; ++beta)
    for (oft::Index j = 0; j < w.cols(); ++j) {
      const double norm = w.block(beta * b, j, b, 1).cast<double>().norm();
      for (oft::Index i = beta * b; i < (beta + 1) * b; ++i)
        tol(i, j) = 2.0 * double(4 * b + 8) * kUnitRoundoff * kappa[static_cast<std::size_t>(beta)] * cs *
                    rescale_factor(op.rescale(), i) * norm;
    }
  return tol;
}

/// The forward bound of the file comment, per element of the N x out output.
inline MatrixD forward_tolerance(const oft::lycoris::DiagOft<float>& op, const Matrix& x, const Matrix& w,
                                 const std::vector<float>& bias, bool bias_rotated) {
  const oft::Index b = op.spec().block_size;
  const std::vector<double> kappa = block_kappas(op);
  const double s = op.multiplier();
  const double cs = std::abs(s) + std::abs(1.0 - s);
  MatrixD magnitude = x.cast<double>().cwiseAbs() * w.cast<double>().cwiseAbs().transpose();
  if (bias_rotated && !bias.empty())
    for (oft::Index t = 0; t < magnitude.rows(); ++t)
      for (oft::Index j = 0; j < magnitude.cols(); ++j) magnitude(t, j) += std::abs(double(bias[size_t(j)]));
  MatrixD tol(magnitude.rows(), magnitude.cols());
  const double terms = double(x.cols() + 4 * b + 8);
  for (oft::Index t = 0; t < tol.rows(); ++t)
    for (oft::Index beta = 0; beta < op.spec().blocks; ++beta) {
      const double norm = magnitude.block(t, beta * b, 1, b).norm();
      for (oft::Index j = beta * b; j < (beta + 1) * b; ++j)
        tol(t, j) = 2.0 * terms * kUnitRoundoff * kappa[static_cast<std::size_t>(beta)] * cs *
                        rescale_factor(op.rescale(), j) * norm +
                    (bias.empty() ? 0.0 : 2.0 * kUnitRoundoff * std::abs(double(bias[size_t(j)])));
    }
  return tol;
}

/// LyCORIS BOFT's kappa (test_lycoris_boft.cpp's file comment derives its bound): the largest
/// sqrt(1 + ||Q||_F^2) over all m N blocks of the constrained generators.
template <class Op>
double boft_kappa(const Op& op) {
  double kappa = 1.0;
  const auto& theta = op.generators();
  for (oft::Index g = 0; g < theta.count(); ++g) {
    double sum = 0.0;
    for (oft::Index k = 0; k < theta.packed(); ++k)
      sum += 2.0 * double(theta.row(g)[k]) * double(theta.row(g)[k]);
    kappa = std::max(kappa, std::sqrt(1.0 + sum));
  }
  return kappa;
}

/// LyCORIS BOFT's merge bound (test_lycoris_boft.cpp's file comment), per element of W'
/// (out x cols).
inline MatrixD boft_merge_tolerance(const oft::lycoris::Boft<float>& op, const Matrix& w) {
  const double s = op.multiplier(), cs = std::abs(s) + std::abs(1.0 - s);
  const double constant = double(op.stages() * (4 * op.block_size() + 8) + 4);
  const double scale =
      2.0 * constant * kUnitRoundoff * boft_kappa(op) * std::pow(cs, double(op.stages()));
  MatrixD tol(w.rows(), w.cols());
  for (oft::Index j = 0; j < w.cols(); ++j) {
    const double norm = w.col(j).cast<double>().norm();
    for (oft::Index i = 0; i < w.rows(); ++i)
      tol(i, j) = scale * rescale_factor(op.rescale(), i) * norm;
  }
  return tol;
}

/// max |a - b| and max |a - b| / tol over the elements.
struct Difference {
  double worst = 0.0;
  double worst_ratio = 0.0;
};
template <class A, class B>
Difference compare(const A& got, const B& want, const MatrixD& tol) {
  Difference d;
  EXPECT_EQ(got.rows(), want.rows());
  EXPECT_EQ(got.cols(), want.cols());
  for (oft::Index i = 0; i < want.rows(); ++i)
    for (oft::Index j = 0; j < want.cols(); ++j) {
      const double diff = std::abs(double(got(i, j)) - double(want(i, j)));
      d.worst = std::max(d.worst, diff);
      if (diff > 0.0) d.worst_ratio = std::max(d.worst_ratio, diff / tol(i, j));
    }
  return d;
}

}  // namespace oft_dialects_test
