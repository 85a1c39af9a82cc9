#pragma once
/// \file expressions.hpp
/// Lazy expressions for one generator: nothing is computed until `.eval()` (a dense matrix) or
/// `.apply(X)` (rows of X times R, without forming R).
///
///   auto q = oft::skew(theta_row, b);          // Q = U - U^T, read straight from packed storage
///   auto r = oft::cayley(q).eval();            // (I + Q)(I - Q)^-1, LU solve
///   auto y = oft::cayley_neumann(q, 4).apply(x);  // x * R_4 by Horner on Q: 2(k+2) b^2 flops per
///                                                  // row, no b^3 work; wins for a few tokens
///
/// `apply` follows the operator orientation (SPEC section 2): each row x of X becomes x * R.
/// A dense skew matrix works as a generator too: `oft::cayley(Q)` with Q an Eigen matrix.

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/LU>
#include <type_traits>

#include "cayley.hpp"
#include "cayley_neumann.hpp"
#include "index.hpp"
#include "skew.hpp"

namespace oft {

/// Rows-of-vectors type the expressions return from apply (row-major, dynamic).
template <class Scalar>
using RowVectors = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Q = U - U^T over one packed row (not owned: the row must outlive the expression).
/// `BlockSize` may fix b at compile time; `Eigen::Dynamic` (default) reads it at run time.
template <class Scalar_, int BlockSize = Eigen::Dynamic>
class SkewExpr {
 public:
  using Scalar = Scalar_;
  SkewExpr(const Scalar* packed_row, Index b) : row_(packed_row), size_(b) {
    detail::require(BlockSize == Eigen::Dynamic || b == BlockSize, "skew expression of block size ",
                    b, " does not match the compile-time block size ", BlockSize);
    detail::require_block_size(b, "skew generator block size");
    detail::require(packed_row != nullptr || b == 1, "skew generator of block size b=", b,
                    " over a null packed row (only b=1, with no entries, may be null)");
  }
  Index size() const { return BlockSize == Eigen::Dynamic ? size_ : BlockSize; }

  Eigen::Matrix<Scalar, BlockSize, BlockSize> eval() const {
    Eigen::Matrix<Scalar, BlockSize, BlockSize> q(size(), size());
    unpack_skew(row_, size(), q);
    return q;
  }

  /// out = x * Q for rows x, straight from packed storage (2 b^2 flops per row). Row p of U is
  /// contiguous in the packed layout, so each step is one axpy and one dot over it:
  ///   (xQ)_c += x_p U(p,c)  for c > p,      (xQ)_p -= sum_{c>p} x_c U(p,c).
  template <class In, class Out>
  void right_multiply(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>& out) const {
    const Index b = size();
    out.setZero();
    for (Index t = 0; t < x.rows(); ++t)
      for (Index p = 0; p + 1 < b; ++p) {
        const Index len = b - p - 1;
        const Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> u(
            row_ + packed_row_start(p, b), len);
        out.row(t).segment(p + 1, len) += x(t, p) * u;
        out(t, p) -= u.dot(x.row(t).segment(p + 1, len));
      }
  }

 private:
  const Scalar* row_;
  Index size_;
};

/// A dense skew-symmetric matrix used as a generator (copied; skew symmetry is the caller's
/// promise and is not checked).
template <class Scalar_>
class DenseSkewExpr {
 public:
  using Scalar = Scalar_;
  template <class Derived>
  explicit DenseSkewExpr(const Eigen::MatrixBase<Derived>& q) : q_(q) {
    detail::require(q.rows() == q.cols(), "generator must be square, got ", q.rows(), "x",
                    q.cols());
  }
  Index size() const { return q_.rows(); }
  const SquareMatrix<Scalar>& eval() const { return q_; }
  template <class In, class Out>
  void right_multiply(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>& out) const {
    out.noalias() = x * q_;
  }

 private:
  SquareMatrix<Scalar> q_;
};

namespace detail {
template <class Generator, class In>
RowVectors<typename Generator::Scalar> checked_rows(const Generator& q,
                                                     const Eigen::MatrixBase<In>& x) {
  require(x.cols() == q.size(), "apply: X has ", x.cols(), " columns, expected b=", q.size());
  return x;
}
}  // namespace detail

/// R = (I + Q)(I - Q)^-1.
template <class Generator>
class CayleyExpr {
 public:
  using Scalar = typename Generator::Scalar;
  explicit CayleyExpr(Generator q) : q_(std::move(q)) {}
  Index size() const { return q_.size(); }

  SquareMatrix<Scalar> eval() const {
    SquareMatrix<Scalar> r;
    ExactCayley{}.rotation(SquareMatrix<Scalar>(q_.eval()), ExactCayley::Plan{}, r);
    return r;
  }

  /// X * R = (X + X Q)(I - Q)^-1 without forming R: one LU of I + Q = (I - Q)^T, then a solve.
  template <class In>
  RowVectors<Scalar> apply(const Eigen::MatrixBase<In>& x) const {
    RowVectors<Scalar> u = detail::checked_rows(q_, x);
    RowVectors<Scalar> uq(u.rows(), u.cols());
    q_.right_multiply(u, uq);
    u += uq;
    const SquareMatrix<Scalar> q = q_.eval();
    Eigen::PartialPivLU<SquareMatrix<Scalar>> lu(SquareMatrix<Scalar>::Identity(size(), size()) +
                                                 q);
    // Y (I - Q) = U  <=>  (I + Q) Y^T = U^T
    return lu.solve(u.transpose()).transpose();
  }

 private:
  Generator q_;
};

/// R_k = (I + Q)(I + Q + ... + Q^k).
template <class Generator>
class CayleyNeumannExpr {
 public:
  using Scalar = typename Generator::Scalar;
  CayleyNeumannExpr(Generator q, int k) : q_(std::move(q)), terms_(CayleyNeumann(k).terms) {}
  Index size() const { return q_.size(); }
  int terms() const { return terms_; }

  SquareMatrix<Scalar> eval() const {
    SquareMatrix<Scalar> r;
    detail::neumann_rotation(SquareMatrix<Scalar>(q_.eval()), terms_, r);
    return r;
  }

  /// X * R_k by Horner: U = X + X Q, then V <- U + V Q (k times). 2(k+1) products x * Q.
  template <class In>
  RowVectors<Scalar> apply(const Eigen::MatrixBase<In>& x) const {
    RowVectors<Scalar> u = detail::checked_rows(q_, x);
    RowVectors<Scalar> vq(u.rows(), u.cols());
    q_.right_multiply(u, vq);
    u += vq;
    RowVectors<Scalar> v = u;
    for (int j = 0; j < terms_; ++j) {
      q_.right_multiply(v, vq);
      v = u + vq;
    }
    return v;
  }

 private:
  Generator q_;
  int terms_;
};

/// Generator expression over one packed row of block size b.
template <int BlockSize = Eigen::Dynamic, class Scalar>
SkewExpr<Scalar, BlockSize> skew(const Scalar* packed_row, Index b) {
  return SkewExpr<Scalar, BlockSize>(packed_row, b);
}
/// Generator expression for row i of a generator view.
template <class Element>
SkewExpr<std::remove_const_t<Element>> skew(const GeneratorView<Element>& theta, Index i) {
  return SkewExpr<std::remove_const_t<Element>>(theta.row(i), theta.block_size());
}

namespace detail {
/// True for Eigen types: those take the dense-matrix overloads below, not the generic ones (a
/// by-value template parameter would otherwise be the better match for an Eigen matrix).
template <class T>
inline constexpr bool is_eigen_v = std::is_base_of_v<Eigen::EigenBase<T>, T>;
}  // namespace detail

template <class Generator, class = std::enable_if_t<!detail::is_eigen_v<Generator>>>
CayleyExpr<Generator> cayley(Generator q) {
  return CayleyExpr<Generator>(std::move(q));
}
template <class Derived>
CayleyExpr<DenseSkewExpr<typename Derived::Scalar>> cayley(const Eigen::MatrixBase<Derived>& q) {
  return CayleyExpr<DenseSkewExpr<typename Derived::Scalar>>(
      DenseSkewExpr<typename Derived::Scalar>(q));
}

template <class Generator, class = std::enable_if_t<!detail::is_eigen_v<Generator>>>
CayleyNeumannExpr<Generator> cayley_neumann(Generator q, int k) {
  return CayleyNeumannExpr<Generator>(std::move(q), k);
}
template <class Derived>
CayleyNeumannExpr<DenseSkewExpr<typename Derived::Scalar>> cayley_neumann(
    const Eigen::MatrixBase<Derived>& q, int k) {
  return CayleyNeumannExpr<DenseSkewExpr<typename Derived::Scalar>>(
      DenseSkewExpr<typename Derived::Scalar>(q), k);
}

}  // namespace oft
