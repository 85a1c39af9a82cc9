#pragma once
/// \file view.hpp
/// Non-owning views over row-major matrices in raw memory: the boundary type through which
/// frameworks (PyTorch tensors, C++ trainers) pass activations without copies.
///
/// `MatrixView<float>` can be written through; `MatrixView<const float>` cannot. A mutable view
/// converts implicitly to a const one. Element (i, j) lives at data[i * stride + j], so a view can
/// address a slice of a wider buffer (stride >= cols).

#include <cstdint>
#include <limits>
#include <type_traits>

#include "detail/intrinsics.hpp"  // before Eigen: see the file
#include <Eigen/Core>

#include "config.hpp"
#include "detail/overlap.hpp"
#include "errors.hpp"

namespace oft {

template <class Element>
class MatrixView {
 public:
  using Scalar = std::remove_const_t<Element>;
  using EigenMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using EigenMap = Eigen::Map<std::conditional_t<std::is_const_v<Element>, const EigenMatrix,
                                                 EigenMatrix>,
                              Eigen::Unaligned, Eigen::OuterStride<>>;

  MatrixView() = default;

  /// Stride argument meaning "rows are packed": the row stride is the width.
  static constexpr Index kPackedRows = -1;

  /// View of `rows x cols` elements with row stride `stride` (kPackedRows, the default, means
  /// cols). Throws std::invalid_argument for negative sizes, a stride smaller than cols or
  /// negative other than kPackedRows, a null pointer with elements, or an extent that does not
  /// fit in an Index.
  MatrixView(Element* data, Index rows, Index cols, Index stride = kPackedRows)
      : data_(data), rows_(rows), cols_(cols), stride_(stride == kPackedRows ? cols : stride) {
    detail::require(rows >= 0 && cols >= 0, "matrix view with negative shape ", rows, "x", cols);
    detail::require(stride >= 0 || stride == kPackedRows, "matrix view row stride ", stride,
                    " is negative (only ", kPackedRows, ", the default, is accepted: rows packed)");
    detail::require(stride_ >= cols, "matrix view row stride ", stride_,
                    " is smaller than its width ", cols);
    detail::require(data != nullptr || rows == 0 || cols == 0,
                    "matrix view of shape ", rows, "x", cols, " over a null pointer");
    detail::require(rows <= 1 || stride_ <= (kMaxElements - cols) / (rows - 1),
                    "matrix view of shape ", rows, "x", cols, " with row stride ", stride_,
                    " spans more elements than an Index holds");
  }

  /// A mutable view converts to a const view.
  template <class Other, class = std::enable_if_t<std::is_same_v<const Other, Element> &&
                                                  !std::is_same_v<Other, Element>>>
  MatrixView(const MatrixView<Other>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), rows_(other.rows()), cols_(other.cols()), stride_(other.stride()) {}

  Element* data() const { return data_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index stride() const { return stride_; }
  bool empty() const { return rows_ == 0 || cols_ == 0; }

  Element& operator()(Index i, Index j) const { return data_[i * stride_ + j]; }
  Element* row(Index i) const { return data_ + i * stride_; }

  /// Sub-view of rows [first, first+count) and columns [col, col+width).
  MatrixView block(Index first, Index col, Index count, Index width) const {
    MatrixView out;
    out.data_ = data_ + first * stride_ + col;
    out.rows_ = count;
    out.cols_ = width;
    out.stride_ = stride_;
    return out;
  }

  /// The same memory as an Eigen map (row-major, outer stride = stride()).
  EigenMap map() const { return EigenMap(data_, rows_, cols_, Eigen::OuterStride<>(stride_)); }

  /// First and one-past-last byte touched, for overlap tests.
  const void* begin_address() const { return data_; }
  const void* end_address() const {
    return empty() ? static_cast<const void*>(data_)
                   : static_cast<const void*>(data_ + (rows_ - 1) * stride_ + cols_);
  }

 private:
  // Largest element count a view may span, so that byte offsets cannot overflow either.
  static constexpr Index kMaxElements =
      std::numeric_limits<Index>::max() / static_cast<Index>(sizeof(Scalar));

  Element* data_ = nullptr;
  Index rows_ = 0;
  Index cols_ = 0;
  Index stride_ = 0;
};

template <class Scalar>
using ConstMatrixView = MatrixView<const Scalar>;

/// View of a row-major Eigen matrix (or a row-major block of one) without copying.
template <class Derived>
auto view(Eigen::DenseBase<Derived>& m) {
  static_assert(static_cast<int>(Derived::Flags) & Eigen::RowMajorBit || Derived::RowsAtCompileTime == 1,
                "oft::view needs a row-major Eigen matrix (Eigen::RowMajor)");
  using Element = typename Derived::Scalar;
  return MatrixView<Element>(m.derived().data(), m.rows(), m.cols(), m.derived().outerStride());
}
template <class Derived>
auto view(const Eigen::DenseBase<Derived>& m) {
  static_assert(static_cast<int>(Derived::Flags) & Eigen::RowMajorBit || Derived::RowsAtCompileTime == 1,
                "oft::view needs a row-major Eigen matrix (Eigen::RowMajor)");
  using Element = const typename Derived::Scalar;
  return MatrixView<Element>(m.derived().data(), m.rows(), m.cols(), m.derived().outerStride());
}

namespace detail {

/// The bytes a view covers, for overlap tests.
template <class A>
StridedRegion region(const MatrixView<A>& v) {
  const Index size = static_cast<Index>(sizeof(A));
  return StridedRegion{reinterpret_cast<std::uintptr_t>(v.data()), v.rows(), v.cols() * size,
                       v.stride() * size};
}

/// True when two views share an element (exact for equal row strides, such as disjoint column
/// slices of one buffer; conservative otherwise: see regions_overlap).
template <class A, class B>
bool overlaps(const MatrixView<A>& a, const MatrixView<B>& b) {
  return regions_overlap(region(a), region(b));
}

/// True when two views address exactly the same elements (supported in-place use).
template <class A, class B>
bool same_memory(const MatrixView<A>& a, const MatrixView<B>& b) {
  return static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) &&
         a.rows() == b.rows() && a.cols() == b.cols() && a.stride() == b.stride();
}

/// Throws unless `out` and `in` are either the same memory or disjoint.
template <class A, class B>
void require_in_place_or_disjoint(const MatrixView<A>& out, const MatrixView<B>& in,
                                  const char* out_name, const char* in_name) {
  require(same_memory(out, in) || !overlaps(out, in), out_name, " partially overlaps ", in_name,
          ": pass the same view for in-place use or disjoint memory");
}

/// Throws unless two views are disjoint (for outputs that cannot be computed in place).
template <class A, class B>
void require_disjoint(const MatrixView<A>& out, const MatrixView<B>& in, const char* out_name,
                      const char* in_name) {
  require(!overlaps(out, in), out_name, " overlaps ", in_name,
          ", which this operation does not support");
}

template <class A>
void require_shape(const MatrixView<A>& m, Index rows, Index cols, const char* name) {
  require(m.rows() == rows && m.cols() == cols, name, " has shape ", m.rows(), "x", m.cols(),
          ", expected ", rows, "x", cols);
}

/// The checks of a backward's activations: X is N x d, dY matches it, and dX (unless skipped, a
/// null view) matches too and is X, dY or disjoint from both. Returns whether dX is wanted.
template <class Scalar>
bool require_backward_activations(const MatrixView<const Scalar>& x, const MatrixView<const Scalar>& dy,
                                  const MatrixView<Scalar>& dx, Index features) {
  require(x.cols() == features, "X has ", x.cols(), " columns, expected d=", features);
  require_shape(dy, x.rows(), features, "dY");
  if (dx.data() == nullptr) return false;
  require_shape(dx, x.rows(), features, "dX");
  require(same_memory(dx, dy) || same_memory(dx, x) || (!overlaps(dx, dy) && !overlaps(dx, x)),
          "dX partially overlaps X or dY: pass one of them for in-place use or disjoint memory");
  return true;
}

}  // namespace detail
}  // namespace oft
