// oft._core: the Python face of oft's rotation (nanobind over DLPack): one binding class per
// device, Rotation (CPU) and CudaRotation (OFT_PYTHON_CUDA builds), constructed alike from
// (features, block_size, shared, Parameterization, dtype name); the dtype name is parsed once
// (parse_dtype) for both.
//
// Arrays come in as nanobind ndarrays (torch tensors, NumPy arrays, anything with DLPack) and are
// used in place, never copied (inputs may be read-only; outputs must be writable): 2-D, float32
// or float64 (and bfloat16 activations for the float32 operator: x, y, dy, dx in bfloat16, theta
// and dtheta in float32), on the CPU, unit column
// stride and any row stride >= the width (the C++ views' rule). Anything else is refused by
// `matrix_of` (arrays.hpp) with a TypeError (dtype) or ValueError (device, shape, strides)
// naming the argument and its shape, before a kernel runs. C++ exceptions keep their messages:
// std::invalid_argument and std::domain_error become ValueError (nanobind's mapping). The GIL
// is released around the kernels, so Python threads (e.g. DataLoader workers) go on while a
// rotation runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/optional.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <variant>
#include <vector>
#include <sstream>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <oft/oft.hpp>
#if __has_include(<oft/version.hpp>)
#include <oft/version.hpp>
#endif

#include "arrays.hpp"
#include "bf16_names.hpp"
#include "serving.hpp"

#ifdef OFT_PYTHON_CUDA
#include "cuda_rotation.hpp"
#endif

namespace nb = nanobind;

namespace {

using oft_python::AnyArray;
using oft_python::arithmetic_name;
using oft_python::parse_arithmetic;
using oft_python::array_of;
using oft_python::dtype_name;
using oft_python::dtype_of;
using oft_python::matrix_of;
using oft_python::python_str;
using oft_python::shape_of;

template <class Element>
oft::GeneratorView<Element> generators_of(const AnyArray& a, const char* name) {
  return oft::GeneratorView<Element>(matrix_of<Element>(a, name));
}

/// Activation types of a rotation (parsed here once, for both devices).
enum class Dtype { Float32, Float64, Float16, Bfloat16 };

Dtype parse_dtype(const std::string& name) {
  if (name == "float32") return Dtype::Float32;
  if (name == "float64") return Dtype::Float64;
  if (name == "float16") return Dtype::Float16;
  if (name == "bfloat16") return Dtype::Bfloat16;
  throw nb::type_error(
      ("dtype " + name + " is not float32, float64, float16 or bfloat16").c_str());
}

/// A parameterization chosen from Python (oft::AnyPolicy).
struct Parameterization {
  oft::AnyPolicy value;
};

std::string describe(const oft::AnyPolicy& p) {
  return std::visit(
      [](const auto& q) -> std::string {
        using P = std::decay_t<decltype(q)>;
        if constexpr (std::is_same_v<P, oft::CayleyNeumann>) {
          return "Parameterization.cayley_neumann(k=" + std::to_string(q.terms) + ")";
        } else if constexpr (std::is_same_v<P, oft::peft::NeumannBranch>) {
          return "Parameterization.peft_neumann(num_terms=" + std::to_string(q.terms) +
                 (q.form == oft::peft::NeumannForm::Legacy ? ", legacy=True)" : ")");
        } else if constexpr (std::is_same_v<P, oft::CayleyNeumannTolerance>) {
          return "Parameterization.tolerance(tol=" + std::to_string(q.tolerance) + ")";
        } else if constexpr (std::is_same_v<P, oft::ExactCayley>) {
          return "Parameterization.cayley()";
        } else {
          return "Parameterization.exponential()";
        }
      },
      p);
}

/// theta or dtheta against the operator's [generators, b(b-1)/2], naming the argument.
void check_generators(const AnyArray& a, const char* name, const oft::BlockSpec& spec) {
  if (a.ndim() != 2 || static_cast<oft::Index>(a.shape(0)) != spec.generators() ||
      static_cast<oft::Index>(a.shape(1)) != spec.packed()) {
    throw nb::value_error((std::string(name) + " has shape " + shape_of(a) + ", expected [" +
                           std::to_string(spec.generators()) + ", " +
                           std::to_string(spec.packed()) + "] (generators x b(b-1)/2 for b = " +
                           std::to_string(spec.block_size) + ")")
                              .c_str());
  }
}

/// BlockOrthogonal for a parameterization chosen at run time, with the Python checks in front.
/// The float32 operator also takes bfloat16 activations: each call follows the dtype of its x.
template <class Scalar>
class CpuRotation {
 public:
  CpuRotation(const oft::BlockSpec& spec, const oft::AnyPolicy& parameterization)
      : op_(spec, parameterization) {}

  const oft::BlockSpec& spec() const { return op_.spec(); }
  std::string parameterization() const { return describe(op_.policy()); }

  void set_generators(const AnyArray& theta) {
    check_generators(theta, "theta", spec());
    const auto view = generators_of<const Scalar>(theta, "theta");
    nb::gil_scoped_release release;
    op_.set_generators(view);
  }

  void apply(const AnyArray& x, const AnyArray& y, bool transposed) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>()) return apply_as<oft::bfloat16>(x, y, transposed);
    }
    apply_as<Scalar>(x, y, transposed);
  }

  void apply_inverse(const AnyArray& x, const AnyArray& y, bool transposed) const {
    const auto xv = matrix_of<const Scalar>(x, "x");
    const auto yv = matrix_of<Scalar>(y, "y");
    if (xv.rows() == 0 && yv.rows() == 0) return;
    nb::gil_scoped_release release;
    op_.apply_inverse(xv, yv, transposed);
  }

  void backward(const AnyArray& x, const AnyArray& dy, const std::optional<AnyArray>& dx,
                const std::optional<AnyArray>& dtheta) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>())
        return backward_as<oft::bfloat16>(x, dy, dx, dtheta);
    }
    backward_as<Scalar>(x, dy, dx, dtheta);
  }

  void backward_from_blocks(const AnyArray& block_gradients, const AnyArray& dtheta) const {
    const auto gv = matrix_of<const Scalar>(block_gradients, "block_gradients");
    check_generators(dtheta, "dtheta", spec());
    const auto dthetav = generators_of<Scalar>(dtheta, "dtheta");
    nb::gil_scoped_release release;
    op_.backward_from_block_gradients(gv, dthetav);
  }

  void rotation_blocks(const AnyArray& out) const {
    const auto ov = matrix_of<Scalar>(out, "out");
    const oft::Index b = spec().block_size, r = spec().blocks;
    if (ov.rows() != r * b || ov.cols() != b) {
      throw nb::value_error(("out " + shape_of(out) + " must be [" + std::to_string(r * b) +
                             ", " + std::to_string(b) + "] (r*b rows of R_i)")
                                .c_str());
    }
    for (oft::Index i = 0; i < r; ++i) ov.block(i * b, 0, b, b).map() = op_.block(i);
  }

  double orthogonality_error() const { return op_.orthogonality_error(); }
  oft::Bf16Arithmetic bf16_arithmetic() const { return op_.bf16_arithmetic(); }
  void set_bf16_arithmetic(oft::Bf16Arithmetic a) { op_.set_bf16_arithmetic(a); }

 private:
  template <class Act>
  void apply_as(const AnyArray& x, const AnyArray& y, bool transposed) const {
    const auto xv = matrix_of<const Act>(x, "x");
    const auto yv = matrix_of<Act>(y, "y");
    if (xv.rows() == 0 && yv.rows() == 0) return;  // an empty batch: nothing to rotate
    nb::gil_scoped_release release;
    if (transposed) {
      op_.apply_transposed(xv, yv);
    } else {
      op_.apply(xv, yv);
    }
  }

  /// backward with activations of type Act; dtheta is always Scalar.
  template <class Act>
  void backward_as(const AnyArray& x, const AnyArray& dy, const std::optional<AnyArray>& dx,
                   const std::optional<AnyArray>& dtheta) const {
    const auto xv = matrix_of<const Act>(x, "x");
    const auto dyv = matrix_of<const Act>(dy, "dy");
    const oft::MatrixView<Act> dxv = dx ? matrix_of<Act>(*dx, "dx") : oft::MatrixView<Act>();
    if (dtheta) check_generators(*dtheta, "dtheta", spec());
    const oft::GeneratorView<Scalar> dthetav =
        dtheta ? generators_of<Scalar>(*dtheta, "dtheta") : oft::GeneratorView<Scalar>();
    if (xv.rows() == 0 && dyv.rows() == 0 && (!dx || dxv.rows() == 0)) {
      // An empty batch: dx has no rows and dtheta is zero (PEFT's gradient there).
      if (dtheta) {
        for (oft::Index g = 0; g < spec().generators(); ++g) {
          Scalar* row = static_cast<Scalar*>(dtheta->data()) + g * dtheta->stride(0);
          for (oft::Index j = 0; j < spec().packed(); ++j) row[j] = Scalar(0);
        }
      }
      return;
    }
    nb::gil_scoped_release release;
    oft::Workspace<Scalar> workspace;  // per call: backward stays safe from several threads
    op_.backward(xv, dyv, dxv, dthetav, workspace);
  }

  oft::AnyBlockOrthogonal<Scalar> op_;
};

/// oft._core.Rotation: the CPU operator for one dtype ("float32", "float64", or "bfloat16",
/// which is the float32 operator: bfloat16 activations, float32 theta).
class Rotation {
 public:
  Rotation(oft::Index features, oft::Index block_size, bool shared,
           const Parameterization& parameterization, const std::string& dtype)
      : dtype_(parse_dtype(dtype)),
        op_(make(oft::BlockSpec::from_features(features, block_size, shared),
                 parameterization.value, dtype_)) {}

  const oft::BlockSpec& spec() const {
    return std::visit([](const auto& op) -> const oft::BlockSpec& { return op.spec(); }, op_);
  }
  oft::Index features() const { return spec().features(); }
  std::string dtype() const {
    return dtype_ == Dtype::Float64 ? "float64" : dtype_ == Dtype::Bfloat16 ? "bfloat16" : "float32";
  }
  std::string parameterization() const {
    return std::visit([](const auto& op) { return op.parameterization(); }, op_);
  }

  void set_generators(nb::handle theta) {
    const AnyArray t = array_of(theta, "theta", false);
    std::visit([&](auto& op) { op.set_generators(t); }, op_);
  }
  void apply(nb::handle x, nb::handle y, bool transposed) const {
    const AnyArray xa = array_of(x, "x", false), ya = array_of(y, "y", true);
    std::visit([&](const auto& op) { op.apply(xa, ya, transposed); }, op_);
  }
  void apply_inverse(nb::handle x, nb::handle y, bool transposed) const {
    const AnyArray xa = array_of(x, "x", false), ya = array_of(y, "y", true);
    std::visit([&](const auto& op) { op.apply_inverse(xa, ya, transposed); }, op_);
  }
  void backward(nb::handle x, nb::handle dy, nb::handle dx, nb::handle dtheta) const {
    const AnyArray xa = array_of(x, "x", false), dya = array_of(dy, "dy", false);
    std::optional<AnyArray> dxa, dthetaa;
    if (!dx.is_none()) dxa = array_of(dx, "dx", true);
    if (!dtheta.is_none()) dthetaa = array_of(dtheta, "dtheta", true);
    std::visit([&](const auto& op) { op.backward(xa, dya, dxa, dthetaa); }, op_);
  }
  void backward_from_blocks(nb::handle block_gradients, nb::handle dtheta) const {
    const AnyArray g = array_of(block_gradients, "block_gradients", false);
    const AnyArray d = array_of(dtheta, "dtheta", true);
    std::visit([&](const auto& op) { op.backward_from_blocks(g, d); }, op_);
  }
  void rotation_blocks(nb::handle out) const {
    const AnyArray o = array_of(out, "out", true);
    std::visit([&](const auto& op) { op.rotation_blocks(o); }, op_);
  }
  double orthogonality_error() const {
    return std::visit([](const auto& op) { return op.orthogonality_error(); }, op_);
  }

  std::string bf16_arithmetic() const { return arithmetic_name(float_op().bf16_arithmetic()); }
  void set_bf16_arithmetic(const std::string& name) {
    const auto a = parse_arithmetic(name);
    float_op().set_bf16_arithmetic(a);
  }

 private:
  using Variant = std::variant<CpuRotation<float>, CpuRotation<double>>;

  static Variant make(const oft::BlockSpec& spec, const oft::AnyPolicy& p, Dtype dtype) {
    switch (dtype) {
      case Dtype::Float64: return Variant(std::in_place_type<CpuRotation<double>>, spec, p);
      case Dtype::Float16:
        throw nb::type_error("dtype float16 is not float32 or float64 (or bfloat16 activations): "
                             "the CPU has no float16 kernels (CUDA has)");
      default: return Variant(std::in_place_type<CpuRotation<float>>, spec, p);
    }
  }
  CpuRotation<float>& float_op() const {
    auto* op = std::get_if<CpuRotation<float>>(&op_);
    if (!op) {
      throw nb::attribute_error(
          "bf16_arithmetic: a float64 operator takes no bfloat16 activations");
    }
    return const_cast<CpuRotation<float>&>(*op);
  }

  Dtype dtype_;
  Variant op_;
};

template <class R>
void bind_shape(nb::class_<R>& cls) {
  cls.def_prop_ro("features", [](const R& r) { return r.spec().features(); })
      .def_prop_ro("block_size", [](const R& r) { return r.spec().block_size; })
      .def_prop_ro("blocks", [](const R& r) { return r.spec().blocks; })
      .def_prop_ro("generators", [](const R& r) { return r.spec().generators(); })
      .def_prop_ro("shared", [](const R& r) { return r.spec().shared; })
      .def_prop_ro("dtype", &R::dtype)
      .def_prop_ro("parameterization", &R::parameterization)
      .def_prop_ro("policy", &R::parameterization);
}

#ifdef OFT_PYTHON_CUDA
/// A device array argument: pointer and row stride, after the same checks as matrix_of (CUDA
/// device, dtype, 2-D, rows x cols, unit column stride).
struct DeviceArg {
  void* data;
  oft::Index ld;
};

DeviceArg device_matrix(nb::handle h, const char* name, bool writable,
                        const nb::dlpack::dtype& dtype, const char* dtype_label, oft::Index rows,
                        oft::Index cols) {
  const AnyArray a = array_of(h, name, writable);
  if (a.device_type() != nb::device::cuda::value) {
    throw nb::value_error((std::string(name) + " " + shape_of(a) +
                           " is not on a CUDA device (CudaRotation takes CUDA tensors)")
                              .c_str());
  }
  if (a.dtype() != dtype) {
    throw nb::type_error((std::string(name) + " " + shape_of(a) + " is " + dtype_name(a.dtype()) +
                          ", expected " + dtype_label)
                             .c_str());
  }
  if (a.ndim() != 2 || (rows >= 0 && static_cast<oft::Index>(a.shape(0)) != rows) ||
      static_cast<oft::Index>(a.shape(1)) != cols) {
    throw nb::value_error((std::string(name) + " has shape " + shape_of(a) + ", expected [" +
                           std::to_string(rows) + ", " + std::to_string(cols) + "]")
                              .c_str());
  }
  oft::Index ld = static_cast<oft::Index>(a.stride(0));
  if (a.shape(0) <= 1) ld = cols;
  if ((cols > 1 && a.stride(1) != 1) || ld < cols) {
    throw nb::value_error((std::string(name) + " " + shape_of(a) +
                           " needs unit column stride and a row stride >= the width")
                              .c_str());
  }
  return {a.data(), ld};
}

/// (exact, k) of the CUDA backend, which has ExactCayley and CayleyNeumann{k}; PEFT's Neumann
/// branch maps through oft::peft::neumann_terms_to_k (T >= 3).
std::pair<bool, int> cuda_parameterization(const oft::AnyPolicy& p) {
  if (std::holds_alternative<oft::ExactCayley>(p)) return {true, 0};
  if (const auto* q = std::get_if<oft::CayleyNeumann>(&p)) return {false, q->terms};
  if (const auto* q = std::get_if<oft::peft::NeumannBranch>(&p)) {
    if (q->form == oft::peft::NeumannForm::Current && q->terms >= 3)
      return {false, oft::peft::neumann_terms_to_k(q->terms)};
  }
  throw nb::value_error((describe(p) + " has no CUDA kernel (CUDA runs cayley, cayley_neumann "
                                       "and peft_neumann with T >= 3); move the tensors to the CPU")
                            .c_str());
}

oft_python::CudaDtype cuda_dtype(Dtype d) {
  switch (d) {
    case Dtype::Float64: return oft_python::CudaDtype::Float64;
    case Dtype::Float16: return oft_python::CudaDtype::Float16;
    case Dtype::Bfloat16: return oft_python::CudaDtype::Bfloat16;
    default: return oft_python::CudaDtype::Float32;
  }
}

/// oft._core.CudaRotation: the CUDA operator, constructed like Rotation, with the Python checks
/// in front (shapes from the operator). Every call enqueues on `stream` (a cudaStream_t as int).
class CudaRotation {
 public:
  CudaRotation(oft::Index features, oft::Index block_size, bool shared,
               const Parameterization& parameterization, const std::string& dtype)
      : spec_(oft::BlockSpec::from_features(features, block_size, shared)),
        parameterization_(parameterization.value),
        dtype_(parse_dtype(dtype)),
        op_(features, block_size, shared, cuda_parameterization(parameterization.value).first,
            cuda_parameterization(parameterization.value).second, cuda_dtype(dtype_)) {}

  const oft::BlockSpec& spec() const { return spec_; }
  std::string dtype() const {
    switch (dtype_) {
      case Dtype::Float64: return "float64";
      case Dtype::Float16: return "float16";
      case Dtype::Bfloat16: return "bfloat16";
      default: return "float32";
    }
  }
  std::string parameterization() const { return describe(parameterization_); }
  bool tensor_cores() const { return op_.tensor_cores(); }

  void set_generators(nb::handle theta, std::uintptr_t stream) {
    const DeviceArg t = device_matrix(theta, "theta", false, parameter_dtype(), parameter_label(),
                                      op_.generators(), op_.packed());
    op_.set_generators(t.data, t.ld, stream);
  }

  void apply(nb::handle x, nb::handle y, bool transposed, std::uintptr_t stream) const {
    const std::string label = dtype();
    const DeviceArg xa = device_matrix(x, "x", false, activation_dtype(), label.c_str(), -1,
                                       spec_.features());
    const oft::Index rows = rows_of(x);
    const DeviceArg ya = device_matrix(y, "y", true, activation_dtype(), label.c_str(), rows,
                                       spec_.features());
    if (rows == 0) return;
    op_.apply(xa.data, xa.ld, ya.data, ya.ld, rows, transposed, stream);
  }

  std::size_t workspace_bytes(oft::Index rows) const { return op_.workspace_bytes(rows); }

  void backward(nb::handle x, nb::handle dy, nb::handle dx, nb::handle dtheta,
                nb::handle workspace, std::uintptr_t stream) const {
    const std::string label = dtype();
    const auto t = activation_dtype();
    const DeviceArg dya = device_matrix(dy, "dy", false, t, label.c_str(), -1, spec_.features());
    const oft::Index rows = rows_of(dy);
    const DeviceArg xa = device_matrix(x, "x", false, t, label.c_str(), rows, spec_.features());
    const DeviceArg dxa = dx.is_none() ? DeviceArg{nullptr, 0}
                                       : device_matrix(dx, "dx", true, t, label.c_str(), rows,
                                                       spec_.features());
    const DeviceArg dtha = dtheta.is_none()
                               ? DeviceArg{nullptr, 0}
                               : device_matrix(dtheta, "dtheta", true, parameter_dtype(),
                                               parameter_label(), op_.generators(), op_.packed());
    const AnyArray w = array_of(workspace, "workspace", true);
    if (w.device_type() != nb::device::cuda::value || w.ndim() != 1 ||
        w.dtype() != nb::dtype<uint8_t>()) {
      throw nb::value_error("workspace must be a 1-D uint8 CUDA tensor");
    }
    op_.backward(xa.data, xa.ld, dya.data, dya.ld, dxa.data, dxa.ld, dtha.data, dtha.ld, w.data(),
                 w.shape(0), rows, stream);
  }

 private:
  static oft::Index rows_of(nb::handle h) {
    return static_cast<oft::Index>(array_of(h, "x", false).shape(0));
  }
  nb::dlpack::dtype activation_dtype() const {
    switch (dtype_) {
      case Dtype::Float64: return nb::dtype<double>();
      case Dtype::Float16: return {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
      case Dtype::Bfloat16: return {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
      default: return nb::dtype<float>();
    }
  }
  nb::dlpack::dtype parameter_dtype() const {
    return dtype_ == Dtype::Float64 ? nb::dtype<double>() : nb::dtype<float>();
  }
  const char* parameter_label() const { return dtype_ == Dtype::Float64 ? "float64" : "float32"; }

  oft::BlockSpec spec_;
  oft::AnyPolicy parameterization_;
  Dtype dtype_;
  oft_python::CudaRotation op_;
};
#endif  // OFT_PYTHON_CUDA

// ---------------------------------------------------------------------------------------------
// The other orthogonal families (docs/families.md): BOFT's butterfly and HRA's Householder
// reflections, in PEFT's parameters (boft_R as [m N, b b], hra_u as [d, r]). Each object keeps
// its backward workspace between calls (fresh memory is slow to touch; a training loop calls
// backward with the same N every step), guarded by a mutex so that two threads never share it.

/// A 2-D array argument of exactly [rows, cols], naming it.
void check_shape(const AnyArray& a, const char* name, oft::Index rows, oft::Index cols,
                 const char* what) {
  if (a.ndim() != 2 || static_cast<oft::Index>(a.shape(0)) != rows ||
      static_cast<oft::Index>(a.shape(1)) != cols) {
    throw nb::value_error((std::string(name) + " has shape " + shape_of(a) + ", expected [" +
                           std::to_string(rows) + ", " + std::to_string(cols) + "] (" + what + ")")
                              .c_str());
  }
}

/// oft::Butterfly for one Scalar, exact Cayley (PEFT's BOFT) or Cayley-Neumann R_k.
template <class Scalar>
class CpuButterfly {
 public:
  CpuButterfly(const oft::ButterflySpec& spec, const oft::AnyPolicy& p)
      : op_(make(spec, p)), theta_(spec.generators() * spec.packed()) {}

  const oft::ButterflySpec& spec() const {
    return std::visit([](const auto& op) -> const oft::ButterflySpec& { return op.spec(); }, op_);
  }

  void set_peft_weight(const AnyArray& boft_r) {
    const auto& s = spec();
    check_shape(boft_r, "boft_R", s.generators(), s.block_size * s.block_size,
                "PEFT's [m, N, b, b] as [m N, b b]");
    const auto view = matrix_of<const Scalar>(boft_r, "boft_R");
    if (view.rows() > 1 && view.stride() != view.cols()) {
      throw nb::value_error("boft_R must be contiguous (call .contiguous() first)");
    }
    nb::gil_scoped_release release;
    const oft::GeneratorView<Scalar> theta(theta_.data(), s.generators(), s.block_size);
    oft::peft::boft_generators(view.data(), s, theta);
    set(oft::GeneratorView<const Scalar>(theta));
  }

  void set_generators(const AnyArray& theta) {
    const auto& s = spec();
    check_shape(theta, "theta", s.generators(), s.packed(), "m N generators x b(b-1)/2");
    const auto view = generators_of<const Scalar>(theta, "theta");
    nb::gil_scoped_release release;
    set(view);
  }

  /// The float32 operator also takes bfloat16 activations (x, y, dy, dx; boft_R and its
  /// gradient stay float32): each call follows the dtype of its x.
  void apply(const AnyArray& x, const AnyArray& y, bool transposed) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>()) return apply_as<oft::bfloat16>(x, y, transposed);
    }
    apply_as<Scalar>(x, y, transposed);
  }

  /// dx = dy M^T; d_boft_R (PEFT's layout, [m N, b b]) or dtheta (packed), either or none.
  void backward(const AnyArray& x, const AnyArray& dy, const std::optional<AnyArray>& dx,
                const std::optional<AnyArray>& d_boft_r, const std::optional<AnyArray>& dtheta) {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>())
        return backward_as<oft::bfloat16>(x, dy, dx, d_boft_r, dtheta);
    }
    backward_as<Scalar>(x, dy, dx, d_boft_r, dtheta);
  }

  double orthogonality_error() const {
    return std::visit([](const auto& op) { return op.orthogonality_error(); }, op_);
  }

 private:
  template <class Act>
  void apply_as(const AnyArray& x, const AnyArray& y, bool transposed) const {
    const auto xv = matrix_of<const Act>(x, "x");
    const auto yv = matrix_of<Act>(y, "y");
    if (xv.rows() == 0 && yv.rows() == 0) return;
    nb::gil_scoped_release release;
    std::visit([&](const auto& op) { transposed ? op.apply_transposed(xv, yv) : op.apply(xv, yv); },
               op_);
  }

  template <class Act>
  void backward_as(const AnyArray& x, const AnyArray& dy, const std::optional<AnyArray>& dx,
                   const std::optional<AnyArray>& d_boft_r, const std::optional<AnyArray>& dtheta) {
    const auto& s = spec();
    const auto xv = matrix_of<const Act>(x, "x");
    const auto dyv = matrix_of<const Act>(dy, "dy");
    const oft::MatrixView<Act> dxv = dx ? matrix_of<Act>(*dx, "dx") : oft::MatrixView<Act>();
    oft::MatrixView<Scalar> dbv;
    if (d_boft_r) {
      check_shape(*d_boft_r, "d_boft_R", s.generators(), s.block_size * s.block_size,
                  "PEFT's [m, N, b, b] as [m N, b b]");
      dbv = matrix_of<Scalar>(*d_boft_r, "d_boft_R");
      if (dbv.rows() > 1 && dbv.stride() != dbv.cols())
        throw nb::value_error("d_boft_R must be contiguous");
    }
    oft::GeneratorView<Scalar> dthv;
    if (dtheta) {
      check_shape(*dtheta, "dtheta", s.generators(), s.packed(), "m N generators x b(b-1)/2");
      dthv = generators_of<Scalar>(*dtheta, "dtheta");
    }
    const bool want_generators = d_boft_r || dtheta;
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    const oft::GeneratorView<Scalar> packed =
        !want_generators ? oft::GeneratorView<Scalar>()
        : dtheta        ? dthv
                        : oft::GeneratorView<Scalar>(dtheta_.reserve(s.generators() * s.packed()),
                                                     s.generators(), s.block_size);
    if (xv.rows() == 0) {  // an empty batch: a zero gradient (PEFT's)
      for (oft::Index g = 0; g < packed.count(); ++g)
        std::fill(packed.row(g), packed.row(g) + s.packed(), Scalar(0));
    } else {
      std::visit([&](const auto& op) { op.backward(xv, dyv, dxv, packed, workspace_); }, op_);
    }
    if (d_boft_r) oft::peft::boft_gradient(oft::GeneratorView<const Scalar>(packed), s, dbv.data());
  }

  using Variant = std::variant<oft::Butterfly<Scalar, oft::ExactCayley>,
                               oft::Butterfly<Scalar, oft::CayleyNeumann>>;

  static Variant make(const oft::ButterflySpec& spec, const oft::AnyPolicy& p) {
    if (std::holds_alternative<oft::ExactCayley>(p))
      return Variant(std::in_place_index<0>, spec, oft::ExactCayley{});
    if (const auto* q = std::get_if<oft::CayleyNeumann>(&p))
      return Variant(std::in_place_index<1>, spec, *q);
    throw nb::value_error((describe(p) + " is not a butterfly parameterization: Butterfly takes "
                                         "Parameterization.cayley() (PEFT's BOFT) or "
                                         "Parameterization.cayley_neumann(k)")
                              .c_str());
  }

  void set(oft::GeneratorView<const Scalar> theta) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::visit([&](auto& op) { op.set_generators(theta); }, op_);
  }

  Variant op_;
  std::vector<Scalar> theta_;
  oft::Workspace<Scalar> workspace_, dtheta_;
  std::mutex mutex_;
};

/// oft::Householder for one Scalar (PEFT's HRA, apply_GS on or off).
template <class Scalar>
class CpuHouseholder {
 public:
  CpuHouseholder(oft::Index features, oft::Index reflections, bool gram_schmidt)
      : op_(features, reflections, gram_schmidt) {}

  oft::Index features() const { return op_.features(); }
  oft::Index reflections() const { return op_.reflections(); }

  void set_vectors(const AnyArray& u) {
    check_shape(u, "hra_u", features(), reflections(), "PEFT's [d, r]");
    const auto view = matrix_of<const Scalar>(u, "hra_u");
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    op_.set_vectors(view);
  }

  /// The float32 operator also takes bfloat16 activations (x, y, dy, dx; hra_u and its gradient
  /// stay float32): each call follows the dtype of its x.
  void apply(const AnyArray& x, const AnyArray& y, bool transposed) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>()) return apply_as<oft::bfloat16>(x, y, transposed);
    }
    apply_as<Scalar>(x, y, transposed);
  }

  void backward(const AnyArray& x, const AnyArray& dy, const std::optional<AnyArray>& dx,
                const std::optional<AnyArray>& du) {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>()) return backward_as<oft::bfloat16>(x, dy, dx, du);
    }
    backward_as<Scalar>(x, dy, dx, du);
  }

 private:
  template <class Act>
  void apply_as(const AnyArray& x, const AnyArray& y, bool transposed) const {
    const auto xv = matrix_of<const Act>(x, "x");
    const auto yv = matrix_of<Act>(y, "y");
    if (xv.rows() == 0 && yv.rows() == 0) return;
    nb::gil_scoped_release release;
    transposed ? op_.apply_transposed(xv, yv) : op_.apply(xv, yv);
  }

  template <class Act>
  void backward_as(const AnyArray& x, const AnyArray& dy, const std::optional<AnyArray>& dx,
                   const std::optional<AnyArray>& du) {
    const auto xv = matrix_of<const Act>(x, "x");
    const auto dyv = matrix_of<const Act>(dy, "dy");
    const oft::MatrixView<Act> dxv = dx ? matrix_of<Act>(*dx, "dx") : oft::MatrixView<Act>();
    oft::MatrixView<Scalar> duv;
    if (du) {
      check_shape(*du, "d_hra_u", features(), reflections(), "PEFT's [d, r]");
      duv = matrix_of<Scalar>(*du, "d_hra_u");
    }
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    op_.backward(xv, dyv, dxv, duv, workspace_);
  }

  oft::Householder<Scalar, oft::cpu> op_;
  oft::Workspace<Scalar> workspace_;
  std::mutex mutex_;
};

/// oft._core.Butterfly / oft._core.Householder: the CPU operators for "float32" or "float64"
/// ("bfloat16": the float32 operator, for bfloat16 activations).
template <template <class> class Op>
class Family {
 public:
  template <class... Args>
  Family(const std::string& dtype, Args&&... args)
      : op_(make(dtype, std::forward<Args>(args)...)), dtype_(dtype) {}

  template <class F>
  decltype(auto) visit(F&& f) {
    return std::visit(std::forward<F>(f), op_);
  }
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(std::forward<F>(f), op_);
  }
  std::string dtype() const { return dtype_; }

 private:
  using Variant = std::variant<Op<float>, Op<double>>;
  template <class... Args>
  static Variant make(const std::string& dtype, Args&&... args) {
    // bfloat16 activations run on the float32 operator (parameters and gradients in float32).
    if (dtype == "float32" || dtype == "bfloat16")
      return Variant(std::in_place_index<0>, std::forward<Args>(args)...);
    if (dtype == "float64") return Variant(std::in_place_index<1>, std::forward<Args>(args)...);
    throw nb::type_error(("dtype " + dtype + " is not float32, float64 or bfloat16 (the CPU "
                                              "families' kernels)")
                             .c_str());
  }
  Variant op_;
  std::string dtype_;
};

using Butterfly = Family<CpuButterfly>;
using Householder = Family<CpuHouseholder>;

std::optional<AnyArray> optional_array(nb::handle h, const char* name, bool writable) {
  if (h.is_none()) return std::nullopt;
  return array_of(h, name, writable);
}

void bind_families(nb::module_& m) {
  nb::class_<Butterfly>(m, "Butterfly",
                        "BOFT's butterfly M = B_{m-1} ... B_0 over d = N b features (CPU).")
      .def(
          "__init__",
          [](Butterfly* self, oft::Index features, oft::Index block_size, oft::Index factors,
             const Parameterization& p, const std::string& dtype) {
            new (self) Butterfly(dtype, oft::ButterflySpec::from_features(features, block_size,
                                                                          factors),
                                 p.value);
          },
          nb::arg("features"), nb::arg("block_size"), nb::arg("factors"),
          nb::arg("parameterization"), nb::arg("dtype"))
      .def_prop_ro("features", [](const Butterfly& b) {
        return b.visit([](const auto& op) { return op.spec().features(); });
      })
      .def_prop_ro("block_size", [](const Butterfly& b) {
        return b.visit([](const auto& op) { return op.spec().block_size; });
      })
      .def_prop_ro("blocks", [](const Butterfly& b) {
        return b.visit([](const auto& op) { return op.spec().blocks; });
      })
      .def_prop_ro("factors", [](const Butterfly& b) {
        return b.visit([](const auto& op) { return op.spec().factors; });
      })
      .def_prop_ro("dtype", &Butterfly::dtype)
      .def(
          "set_peft_weight",
          [](Butterfly& b, nb::handle boft_r) {
            const AnyArray a = array_of(boft_r, "boft_R", false);
            b.visit([&](auto& op) { op.set_peft_weight(a); });
          },
          nb::arg("boft_R"),
          "PEFT's boft_R [m, N, b, b], passed as [m N, b b]: the skew part S = (A - A^T)/2, "
          "blocks (I - S)(I + S)^-1.")
      .def(
          "set_generators",
          [](Butterfly& b, nb::handle theta) {
            const AnyArray a = array_of(theta, "theta", false);
            b.visit([&](auto& op) { op.set_generators(a); });
          },
          nb::arg("theta"), "oft's packed generators [m N, b(b-1)/2].")
      .def(
          "apply",
          [](const Butterfly& b, nb::handle x, nb::handle y, bool transposed) {
            const AnyArray xa = array_of(x, "x", false), ya = array_of(y, "y", true);
            b.visit([&](const auto& op) { op.apply(xa, ya, transposed); });
          },
          nb::arg("x"), nb::arg("y"), nb::arg("transposed") = false,
          "y = x M (or x M^T); y may be x.")
      .def(
          "backward",
          [](Butterfly& b, nb::handle x, nb::handle dy, nb::handle dx, nb::handle d_boft_r,
             nb::handle dtheta) {
            const AnyArray xa = array_of(x, "x", false), dya = array_of(dy, "dy", false);
            const auto dxa = optional_array(dx, "dx", true);
            const auto dba = optional_array(d_boft_r, "d_boft_R", true);
            const auto dta = optional_array(dtheta, "dtheta", true);
            b.visit([&](auto& op) { op.backward(xa, dya, dxa, dba, dta); });
          },
          nb::arg("x"), nb::arg("dy"), nb::arg("dx").none() = nb::none(),
          nb::arg("d_boft_R").none() = nb::none(), nb::arg("dtheta").none() = nb::none(),
          "dx = dy M^T, d_boft_R (PEFT's layout [m N, b b]) and/or dtheta; None skips.")
      .def("orthogonality_error", [](const Butterfly& b) {
        return b.visit([](const auto& op) { return op.orthogonality_error(); });
      });

  nb::class_<Householder>(m, "Householder",
                          "HRA's R_H = H_0 ... H_{r-1} from PEFT's hra_u [d, r] (CPU).")
      .def(
          "__init__",
          [](Householder* self, oft::Index features, oft::Index reflections, bool gram_schmidt,
             const std::string& dtype) {
            new (self) Householder(dtype, features, reflections, gram_schmidt);
          },
          nb::arg("features"), nb::arg("reflections"), nb::arg("gram_schmidt"), nb::arg("dtype"))
      .def_prop_ro("features", [](const Householder& h) {
        return h.visit([](const auto& op) { return op.features(); });
      })
      .def_prop_ro("reflections", [](const Householder& h) {
        return h.visit([](const auto& op) { return op.reflections(); });
      })
      .def_prop_ro("dtype", &Householder::dtype)
      .def(
          "set_vectors",
          [](Householder& h, nb::handle u) {
            const AnyArray a = array_of(u, "hra_u", false);
            h.visit([&](auto& op) { op.set_vectors(a); });
          },
          nb::arg("hra_u"), "PEFT's hra_u [d, r].")
      .def(
          "apply",
          [](const Householder& h, nb::handle x, nb::handle y, bool transposed) {
            const AnyArray xa = array_of(x, "x", false), ya = array_of(y, "y", true);
            h.visit([&](const auto& op) { op.apply(xa, ya, transposed); });
          },
          nb::arg("x"), nb::arg("y"), nb::arg("transposed") = false,
          "y = x R_H^T (PEFT's layer input rotation), or x R_H; y may be x.")
      .def(
          "backward",
          [](Householder& h, nb::handle x, nb::handle dy, nb::handle dx, nb::handle du) {
            const AnyArray xa = array_of(x, "x", false), dya = array_of(dy, "dy", false);
            const auto dxa = optional_array(dx, "dx", true);
            const auto dua = optional_array(du, "d_hra_u", true);
            h.visit([&](auto& op) { op.backward(xa, dya, dxa, dua); });
          },
          nb::arg("x"), nb::arg("dy"), nb::arg("dx").none() = nb::none(),
          nb::arg("d_hra_u").none() = nb::none(),
          "dx = dy R_H and d_hra_u [d, r]; None skips either.");
}

}  // namespace

// One complete module per instruction-set level (python/CMakeLists.txt compiles this file once per
// level into its own shared object, _core_x86_64_v3, _core_x86_64_v4, ...: the header-only kernels
// are inline templates, so two levels in one shared object would leave the linker one arbitrary
// copy of each); oft/_dispatch.py imports the one this CPU runs.
#ifndef OFT_PYTHON_MODULE
#define OFT_PYTHON_MODULE _core
#endif
#ifndef OFT_PYTHON_ISA
#define OFT_PYTHON_ISA "unspecified"
#endif

namespace {

// What this module was compiled for, from the compiler's own macros (oft.build_info()).
nb::dict compiled_build() {
  nb::dict info;
  info["level"] = OFT_PYTHON_ISA;
  nb::list flags;
  auto add = [&flags](bool on, const char* name) {
    if (on) flags.append(name);
  };
#ifdef __SSE4_2__
  add(true, "sse4_2");
#endif
#ifdef __AVX__
  add(true, "avx");
#endif
#ifdef __AVX2__
  add(true, "avx2");
#endif
#ifdef __FMA__
  add(true, "fma");
#endif
#ifdef __F16C__
  add(true, "f16c");
#endif
#ifdef __AVX512F__
  add(true, "avx512f");
#endif
#ifdef __AVX512BW__
  add(true, "avx512bw");
#endif
#ifdef __AVX512CD__
  add(true, "avx512cd");
#endif
#ifdef __AVX512DQ__
  add(true, "avx512dq");
#endif
#ifdef __AVX512VL__
  add(true, "avx512vl");
#endif
#ifdef __AVX512BF16__
  add(true, "avx512_bf16");
#endif
#ifdef __ARM_NEON
  add(true, "neon");
#endif
  (void)add;
  info["compiled_flags"] = flags;
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "GCC " __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["bf16_dot_product"] = oft::kBf16DotProductAvailable;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef OFT_VERSION_STRING
  info["version"] = OFT_VERSION_STRING;
#endif
  return info;
}

}  // namespace

NB_MODULE(OFT_PYTHON_MODULE, m) {
  m.attr("_build") = compiled_build();
  m.doc() = "oft's rotation kernels over DLPack arrays: the CPU (float32, float64, bfloat16 "
            "activations) and, when built with OFT_PYTHON_CUDA, CUDA";

  nb::class_<Parameterization>(m, "Parameterization")
      .def_static("cayley", [] { return Parameterization{oft::ExactCayley{}}; },
                  "Exact Cayley R = (I + Q)(I - Q)^-1.")
      .def_static("cayley_neumann", [](int k) { return Parameterization{oft::CayleyNeumann{k}}; },
                  nb::arg("k"), "Cayley-Neumann R_k = I + 2Q + ... + 2Q^k + Q^(k+1).")
      .def_static(
          "peft_neumann",
          [](int num_terms, bool legacy) {
            return Parameterization{oft::peft::NeumannBranch{
                num_terms, legacy ? oft::peft::NeumannForm::Legacy : oft::peft::NeumannForm::Current}};
          },
          nb::arg("num_terms"), nb::arg("legacy") = false,
          "PEFT's Neumann branch with num_cayley_neumann_terms = T (any T >= 0).")
      .def_static(
          "tolerance",
          [](double tol, bool fall_back_to_exact) {
            return Parameterization{oft::CayleyNeumannTolerance{
                tol, fall_back_to_exact ? oft::OnDivergence::UseExactCayley : oft::OnDivergence::Throw}};
          },
          nb::arg("tol"), nb::arg("fall_back_to_exact") = false,
          "The fewest Neumann terms whose bound keeps ||R_k - R|| <= tol.")
      .def_static("exponential", [] { return Parameterization{oft::MatrixExponential{}}; },
                  "R = exp(Q) (for comparison with the Cayley maps).")
      .def_prop_ro("name", [](const Parameterization& p) { return oft::policy_name(p.value); })
      .def("__repr__", [](const Parameterization& p) { return describe(p.value); });
  m.attr("Policy") = m.attr("Parameterization");

  m.def("neumann_terms_to_k", &oft::peft::neumann_terms_to_k, nb::arg("num_terms"),
        "oft's k for PEFT's num_cayley_neumann_terms T >= 3 (oft::peft::neumann_terms_to_k).");

  nb::class_<Rotation> cpu(m, "Rotation");
  cpu.def(nb::init<oft::Index, oft::Index, bool, const Parameterization&, const std::string&>(),
          nb::arg("features"), nb::arg("block_size"), nb::arg("shared"),
          nb::arg("parameterization"), nb::arg("dtype"));
  bind_shape(cpu);
  cpu.def("set_generators", &Rotation::set_generators, nb::arg("theta"),
          "theta -> R_i (theta: [generators, b(b-1)/2]).")
      .def("apply", &Rotation::apply, nb::arg("x"), nb::arg("y"), nb::arg("transposed") = false,
           "y = x R (or x R^T); y may be x itself.")
      .def("apply_inverse", &Rotation::apply_inverse, nb::arg("x"), nb::arg("y"),
           nb::arg("transposed") = false, "y = x R^-1 (or x R^-T), per-block LU.")
      .def("backward", &Rotation::backward, nb::arg("x"), nb::arg("dy"), nb::arg("dx").none(),
           nb::arg("dtheta").none(),
           "dx = dy R^T and dtheta = d<dy, x R>/dtheta; pass None to skip either.")
      .def("backward_from_blocks", &Rotation::backward_from_blocks, nb::arg("block_gradients"),
           nb::arg("dtheta"), "dtheta from dL/dR_i stacked as [r*b, b].")
      .def("rotation_blocks", &Rotation::rotation_blocks, nb::arg("out"),
           "Writes R_i of every block, stacked as [r*b, b].")
      .def("orthogonality_error", &Rotation::orthogonality_error)
      .def_prop_rw("bf16_arithmetic", &Rotation::bf16_arithmetic, &Rotation::set_bf16_arithmetic,
                   "How bfloat16 activations are computed (float32 and bfloat16 operators): "
                   "'float' (widen, the float32 kernels, round once: bitwise the float32 path's "
                   "rounding) or 'dot_product' (vdpbf16ps; within the bound of docs/bf16.md; the "
                   "default where the build has AVX512_BF16).");
  m.attr("has_bf16_dot_product") = oft::kBf16DotProductAvailable;
  bind_families(m);
  bind_serving(m);

  m.def("set_num_threads", [](int n) {
#ifdef _OPENMP
    if (n < 1) throw nb::value_error(("set_num_threads needs n >= 1, got " + std::to_string(n)).c_str());
    omp_set_num_threads(n);
#else
    (void)n;
#endif
  }, nb::arg("n"), "Threads of oft's OpenMP loops (torch.set_num_threads does not reach them).");
  m.def("get_num_threads", [] {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
#ifdef OFT_PYTHON_CUDA
  nb::class_<CudaRotation> cuda(m, "CudaRotation");
  cuda.def(nb::init<oft::Index, oft::Index, bool, const Parameterization&, const std::string&>(),
           nb::arg("features"), nb::arg("block_size"), nb::arg("shared"),
           nb::arg("parameterization"), nb::arg("dtype"));
  bind_shape(cuda);
  cuda.def_prop_ro("tensor_cores", &CudaRotation::tensor_cores)
      .def("set_generators", &CudaRotation::set_generators, nb::arg("theta"), nb::arg("stream"))
      .def("apply", &CudaRotation::apply, nb::arg("x"), nb::arg("y"), nb::arg("transposed"),
           nb::arg("stream"))
      .def("workspace_bytes", &CudaRotation::workspace_bytes, nb::arg("rows"))
      .def("backward", &CudaRotation::backward, nb::arg("x"), nb::arg("dy"), nb::arg("dx").none(),
           nb::arg("dtheta").none(), nb::arg("workspace"), nb::arg("stream"));
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
