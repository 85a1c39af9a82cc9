// nvcc side of oft._core's CUDA path (see cuda_rotation.hpp).
#include "cuda_rotation.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <variant>

#include <oft/cuda.hpp>

namespace oft_python {

namespace {

template <class T, class P>
using Op = oft::BlockOrthogonal<T, P, oft::cuda>;

template <class T>
using OpsOf = std::variant<Op<T, oft::CayleyNeumann>, Op<T, oft::ExactCayley>>;

cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

struct CudaRotation::Impl {
  std::variant<Op<float, oft::CayleyNeumann>, Op<float, oft::ExactCayley>,
               Op<double, oft::CayleyNeumann>, Op<double, oft::ExactCayley>,
               Op<__half, oft::CayleyNeumann>, Op<__half, oft::ExactCayley>,
               Op<__nv_bfloat16, oft::CayleyNeumann>, Op<__nv_bfloat16, oft::ExactCayley>>
      op;

  template <class T>
  static Impl make(const oft::BlockSpec& spec, bool exact, int k) {
    if (exact) return Impl{Op<T, oft::ExactCayley>(spec, oft::ExactCayley{})};
    return Impl{Op<T, oft::CayleyNeumann>(spec, oft::CayleyNeumann{k})};
  }
};

CudaRotation::CudaRotation(oft::Index features, oft::Index block_size, bool shared, bool exact,
                           int k, CudaDtype dtype) {
  const oft::BlockSpec spec = oft::BlockSpec::from_features(features, block_size, shared);
  switch (dtype) {
    case CudaDtype::Float32: impl_ = std::make_unique<Impl>(Impl::make<float>(spec, exact, k)); break;
    case CudaDtype::Float64: impl_ = std::make_unique<Impl>(Impl::make<double>(spec, exact, k)); break;
    case CudaDtype::Float16: impl_ = std::make_unique<Impl>(Impl::make<__half>(spec, exact, k)); break;
    case CudaDtype::Bfloat16:
      impl_ = std::make_unique<Impl>(Impl::make<__nv_bfloat16>(spec, exact, k));
      break;
  }
}

CudaRotation::~CudaRotation() = default;

oft::Index CudaRotation::generators() const {
  return std::visit([](const auto& op) { return op.spec().generators(); }, impl_->op);
}

oft::Index CudaRotation::packed() const {
  return std::visit([](const auto& op) { return op.spec().packed(); }, impl_->op);
}

bool CudaRotation::tensor_cores() const {
  return std::visit([](const auto& op) { return op.use_tensor_cores(); }, impl_->op);
}

void CudaRotation::set_generators(const void* theta, oft::Index ld, std::uintptr_t stream) {
  std::visit(
      [&](auto& op) {
        using O = std::decay_t<decltype(op)>;
        using Par = typename O::Parameter;
        op.set_generators(oft::DeviceMatrixView<const Par>(static_cast<const Par*>(theta),
                                                           op.spec().generators(),
                                                           op.spec().packed(), ld),
                          as_stream(stream));
      },
      impl_->op);
}

void CudaRotation::apply(const void* x, oft::Index ldx, void* y, oft::Index ldy, oft::Index rows,
                         bool transposed, std::uintptr_t stream) const {
  std::visit(
      [&](const auto& op) {
        using T = typename std::decay_t<decltype(op)>::Scalar;
        const oft::Index d = op.features();
        const oft::DeviceMatrixView<const T> xv(static_cast<const T*>(x), rows, d, ldx);
        const oft::DeviceMatrixView<T> yv(static_cast<T*>(y), rows, d, ldy);
        if (transposed) {
          op.apply_transposed(xv, yv, as_stream(stream));
        } else {
          op.apply(xv, yv, as_stream(stream));
        }
      },
      impl_->op);
}

std::size_t CudaRotation::workspace_bytes(oft::Index rows) const {
  return std::visit([&](const auto& op) { return op.workspace_bytes(rows); }, impl_->op);
}

void CudaRotation::backward(const void* x, oft::Index ldx, const void* dy, oft::Index lddy,
                            void* dx, oft::Index lddx, void* dtheta, oft::Index ldtheta,
                            void* workspace, std::size_t workspace_size, oft::Index rows,
                            std::uintptr_t stream) const {
  std::visit(
      [&](const auto& op) {
        using O = std::decay_t<decltype(op)>;
        using T = typename O::Scalar;
        using Par = typename O::Parameter;
        const oft::Index d = op.features();
        const oft::DeviceMatrixView<const T> xv(static_cast<const T*>(x), rows, d, ldx);
        const oft::DeviceMatrixView<const T> dyv(static_cast<const T*>(dy), rows, d, lddy);
        const oft::DeviceMatrixView<T> dxv =
            dx ? oft::DeviceMatrixView<T>(static_cast<T*>(dx), rows, d, lddx) : oft::DeviceMatrixView<T>();
        const oft::DeviceMatrixView<Par> dthetav =
            dtheta ? oft::DeviceMatrixView<Par>(static_cast<Par*>(dtheta), op.spec().generators(),
                                                op.spec().packed(), ldtheta)
                   : oft::DeviceMatrixView<Par>();
        op.backward(xv, dyv, dxv, dthetav, workspace, workspace_size, as_stream(stream));
      },
      impl_->op);
}

}  // namespace oft_python
