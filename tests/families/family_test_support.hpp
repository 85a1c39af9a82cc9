#pragma once
// What the family tests share: PEFT's fixtures (fixtures/families_reference.safetensors, made by
// make_reference.py) read through oft::io, the fixtures' error measure, and seeded inputs.
#include <oft/io/safetensors.hpp>
#include <oft/half_types.hpp>
#include <oft/parameterization.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace oft_family_test {

using Matrix = oft::RowMatrix<double>;

inline const oft::io::SafetensorsFile& fixtures() {
  static const auto file = oft::io::SafetensorsFile::open(
      std::string(OFT_FAMILIES_FIXTURES_DIR) + "/families_reference.safetensors");
  return file;
}

/// A fixture tensor as rows = its first dimension, columns = the rest.
inline Matrix load(const std::string& name) {
  const auto t = fixtures().tensor(name);
  const std::vector<double> values = t.copy_as<double>();
  const auto rows = static_cast<oft::Index>(t.shape.at(0));
  const auto cols = static_cast<oft::Index>(values.size()) / std::max<oft::Index>(rows, 1);
  return Eigen::Map<const Matrix>(values.data(), rows, cols);
}

/// The case names of one family: the tensors `<family>_*<suffix>` without the suffix.
inline std::vector<std::string> cases(const std::string& family, const std::string& suffix) {
  std::vector<std::string> found;
  for (const auto& name : fixtures().tensor_names())
    if (name.rfind(family + "_", 0) == 0 && name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      found.push_back(name.substr(0, name.size() - suffix.size()));
  return found;
}

/// ||a - b||_F / ||b||_F (the fixtures' own measure).
template <class A, class B>
double relative(const A& a, const B& b) {
  return (Matrix(a) - Matrix(b)).norm() / Matrix(b).norm();
}

inline Matrix random_matrix(oft::Index rows, oft::Index cols, unsigned seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  Matrix m(rows, cols);
  for (oft::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

/// bfloat16 activations: matrices of them, and the contract every family's bfloat16 path keeps:
/// the inputs widened exactly, the arithmetic in float, each output rounded once. `got` must be
/// `want` (the float operator on the widened inputs) rounded to bfloat16, to one bfloat16 ulp
/// (the float sums may be ordered differently on the float tile than on the caller's rows), and
/// almost every element exactly.
using BfMatrix = Eigen::Matrix<oft::bfloat16, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using FloatMatrix = oft::RowMatrix<float>;

inline BfMatrix to_bf16(const Matrix& m) { return m.cast<float>().cast<oft::bfloat16>(); }
inline FloatMatrix widen(const BfMatrix& m) { return m.cast<float>(); }

inline ::testing::AssertionResult rounded_once(const BfMatrix& got, const FloatMatrix& want) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) return ::testing::AssertionFailure() << "shape";
  oft::Index exact = 0;
  for (oft::Index i = 0; i < want.size(); ++i) {
    const float w = want.data()[i], g = static_cast<float>(got.data()[i]);
    const float rounded = static_cast<float>(oft::bfloat16(w));
    if (g == rounded) {
      ++exact;
      continue;
    }
    const float ulp = std::abs(rounded) * 0x1p-7f + 1e-30f;  // one bfloat16 ulp, at most
    if (std::abs(g - rounded) > ulp)
      return ::testing::AssertionFailure() << "element " << i << ": " << g << " vs float " << w;
  }
  if (exact < want.size() * 99 / 100)
    return ::testing::AssertionFailure() << exact << " of " << want.size() << " exactly rounded";
  return ::testing::AssertionSuccess();
}

}  // namespace oft_family_test
