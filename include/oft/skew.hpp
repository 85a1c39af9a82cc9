#pragma once
/// \file skew.hpp
/// Skew-symmetric generators in the packed layout of SPEC section 3 (also Hugging Face PEFT's
/// `oft_R.weight`): theta is `g x m`, one packed row of m = b(b-1)/2 numbers per generator.
///
/// - `unpack_skew(row, b, Q)`  : packed row -> dense Q = U - U^T
/// - `pack_skew(Q, row)`       : dense skew Q -> packed row (reads the strict upper triangle)
/// - `pack_skew_gradient(dQ, row)`: dL/dtheta(p,q) = dL/dQ(p,q) - dL/dQ(q,p), for any dense dQ
/// - `GeneratorView<float>` / `GeneratorView<const float>`: non-owning view (row stride allowed)
/// - `Generators<float>`: owning storage; `.view()` gives the views.
///
/// The block size may be a compile-time constant (`Eigen::Matrix<float, 32, 32>`) or dynamic.

#include <cmath>

#include "index.hpp"
#include "view.hpp"

namespace oft {

/// Dense Q (b x b) from one packed row. Q must already have size b x b or be resizable to it.
template <class Scalar, class Derived>
void unpack_skew(const Scalar* row, Index b, const Eigen::MatrixBase<Derived>& q_out) {
  auto& q = const_cast<Eigen::MatrixBase<Derived>&>(q_out).derived();
  q.resize(b, b);
  for (Index p = 0; p < b; ++p) {
    q(p, p) = Scalar(0);
    // u[j] is element (p, p + 1 + j). Indexing from the row's start never forms a pointer before
    // `row` (undefined behaviour; `row` is even null for b = 1, where m = 0).
    const Scalar* u = row + packed_row_start(p, b);
    for (Index c = p + 1; c < b; ++c) {
      q(p, c) = u[c - p - 1];
      q(c, p) = -u[c - p - 1];
    }
  }
}

/// Packed row from a dense skew-symmetric Q: reads the strict upper triangle only.
template <class Derived, class Scalar>
void pack_skew(const Eigen::MatrixBase<Derived>& q, Scalar* row) {
  const Index b = q.rows();
  for (Index p = 0; p < b; ++p)
    for (Index c = p + 1; c < b; ++c) row[packed_index(p, c, b)] = Scalar(q(p, c));
}

/// Packed gradient from a dense gradient dL/dQ: row(p,q) = dQ(p,q) - dQ(q,p) (chain rule through
/// Q = U - U^T). When `accumulate` is true the result is added to the row (shared generators).
template <class Derived, class Scalar>
void pack_skew_gradient(const Eigen::MatrixBase<Derived>& dq, Scalar* row, bool accumulate = false) {
  const Index b = dq.rows();
  for (Index p = 0; p < b; ++p)
    for (Index c = p + 1; c < b; ++c) {
      const Scalar g = Scalar(dq(p, c) - dq(c, p));
      Scalar& slot = row[packed_index(p, c, b)];
      slot = accumulate ? Scalar(slot + g) : g;
    }
}

/// Non-owning view of g packed generators of block size b: a g x m row-major matrix with a row
/// stride. `Element` is `const Scalar` for a read-only view.
template <class Element>
class GeneratorView {
 public:
  using Scalar = std::remove_const_t<Element>;

  GeneratorView() = default;

  /// View of `count` generators of block size `b` at `data`, rows `stride` elements apart
  /// (default: packed_size(b)). Throws std::invalid_argument on inconsistent sizes.
  GeneratorView(Element* data, Index count, Index b, Index stride = -1)
      : matrix_(data, count, packed_size(check_block(b)), stride), block_size_(b) {}

  /// Wraps a g x m matrix view; b is deduced from m (throws if m is not triangular).
  explicit GeneratorView(MatrixView<Element> packed)
      : matrix_(packed), block_size_(block_size_from_packed(packed.cols())) {}

  template <class Other, class = std::enable_if_t<std::is_same_v<const Other, Element> &&
                                                  !std::is_same_v<Other, Element>>>
  GeneratorView(const GeneratorView<Other>& other)  // NOLINT(google-explicit-constructor)
      : matrix_(other.matrix()), block_size_(other.block_size()) {}

  Index count() const { return matrix_.rows(); }      ///< number of generators g
  Index block_size() const { return block_size_; }    ///< b
  Index packed() const { return matrix_.cols(); }     ///< m = b(b-1)/2
  Index stride() const { return matrix_.stride(); }
  Element* data() const { return matrix_.data(); }
  Element* row(Index i) const { return matrix_.row(i); }
  const MatrixView<Element>& matrix() const { return matrix_; }

  /// Entry (p, q) of generator i's U. Throws std::invalid_argument unless 0 <= i < count() and
  /// 0 <= p < q < b (row(i) is the unchecked access for loops).
  Element& operator()(Index i, Index p, Index q) const {
    check_generator_index(i);
    detail::require(p >= 0 && p < q && q < block_size_, "generator element (", p, ",", q,
                    ") is not in the strict upper triangle of a ", block_size_, "x",
                    block_size_, " block (needs 0 <= p < q < b)");
    return matrix_(i, packed_index(p, q, block_size_));
  }

  /// Dense Q_i (throws std::invalid_argument unless 0 <= i < count()).
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dense(Index i) const {
    check_generator_index(i);
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> q(block_size_, block_size_);
    unpack_skew(row(i), block_size_, q);
    return q;
  }

  /// Throws std::domain_error naming the first non-finite entry (generator, p, q), if any.
  void require_finite(const char* name = "theta") const {
    for (Index i = 0; i < count(); ++i)
      for (Index k = 0; k < packed(); ++k)
        if (!std::isfinite(static_cast<double>(matrix_(i, k)))) {
          Index p = 0;
          while (packed_row_start(p + 1, block_size_) <= k) ++p;
          const Index q = k - packed_row_start(p, block_size_) + p + 1;
          detail::require_domain(false, name, " has a non-finite entry ", matrix_(i, k),
                                 " at generator ", i, ", element (", p, ",", q, ")");
        }
  }

 private:
  void check_generator_index(Index i) const {
    detail::require(i >= 0 && i < count(), "generator index ", i, " outside [0, ", count(), ")");
  }

  static Index check_block(Index b) {
    detail::require_block_size(b, "generator block size");
    return b;
  }

  MatrixView<Element> matrix_;
  Index block_size_ = 0;
};

/// Owning storage for g packed generators of block size b (zero-initialized: R = I).
template <class Scalar>
class Generators {
 public:
  using Storage = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  Generators() = default;
  Generators(Index count, Index b) : block_size_(b) {
    detail::require(count >= 0 && b >= 1, "generators need count >= 0 and b >= 1, got count=",
                    count, " b=", b);
    detail::require_block_size(b, "generator block size");
    values_ = Storage::Zero(count, packed_size(b));
  }
  /// Storage sized for a block spec (1 row when shared).
  explicit Generators(const BlockSpec& spec) : Generators(spec.generators(), spec.block_size) {}

  GeneratorView<Scalar> view() {
    return GeneratorView<Scalar>(values_.data(), values_.rows(), block_size_, values_.cols());
  }
  GeneratorView<const Scalar> view() const {
    return GeneratorView<const Scalar>(values_.data(), values_.rows(), block_size_,
                                       values_.cols());
  }
  operator GeneratorView<Scalar>() { return view(); }               // NOLINT
  operator GeneratorView<const Scalar>() const { return view(); }   // NOLINT

  Index count() const { return values_.rows(); }
  Index block_size() const { return block_size_; }
  Index packed() const { return values_.cols(); }
  Scalar* row(Index i) { return values_.row(i).data(); }
  const Scalar* row(Index i) const { return values_.row(i).data(); }
  Storage& values() { return values_; }
  const Storage& values() const { return values_; }
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dense(Index i) const {
    return view().dense(i);
  }

 private:
  Storage values_;
  Index block_size_ = 0;
};

}  // namespace oft
