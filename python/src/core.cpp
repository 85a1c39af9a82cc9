// oft._core: the Python face of oft's CPU rotation (nanobind over DLPack).
//
// Arrays come in as nanobind ndarrays (torch tensors, NumPy arrays, anything with DLPack) and are
// used in place, never copied: 2-D, float32 or float64 (and bfloat16 activations for the float32
// operator: x, y, dy, dx in bfloat16, theta and dtheta in float32), on the CPU, unit column
// stride and any row stride >= the width (the C++ views' rule). Anything else is refused by
// `matrix_of` with a TypeError (dtype) or ValueError (device, shape, strides) naming the argument
// and its shape, before a kernel runs. C++ exceptions keep their messages: std::invalid_argument
// and std::domain_error become ValueError (nanobind's mapping). The GIL is released around the
// kernels, so Python threads (e.g. DataLoader workers) go on while a rotation runs.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <sstream>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <oft/oft.hpp>

#ifdef OFT_PYTHON_CUDA
#include "cuda_rotation.hpp"
#endif

namespace nb = nanobind;

namespace {

using Array = nb::ndarray<nb::device::cpu>;
using AnyArray = nb::ndarray<>;

template <class Scalar>
const char* dtype_name() {
  if constexpr (std::is_same_v<Scalar, oft::bfloat16>) {
    return "bfloat16";
  } else {
    return sizeof(Scalar) == 4 ? "float32" : "float64";
  }
}

/// DLPack's code for Scalar (nanobind has none for Eigen::bfloat16).
template <class Scalar>
nb::dlpack::dtype dtype_of() {
  if constexpr (std::is_same_v<Scalar, oft::bfloat16>) {
    return {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
  } else {
    return nb::dtype<Scalar>();
  }
}

std::string dtype_name(const nb::dlpack::dtype& t) {
  const char* kind = t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)      ? "float"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int)      ? "int"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::UInt)     ? "uint"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat)   ? "bfloat"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bool)     ? "bool"
                     : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Complex)  ? "complex"
                                                                                        : "dtype";
  return std::string(kind) + std::to_string(t.bits);
}

std::string shape_of(const AnyArray& a) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < a.ndim(); ++i) out << (i ? ", " : "") << a.shape(i);
  out << "]";
  return out.str();
}

/// The C++ view of a 2-D array argument, or a Python exception naming it.
template <class Element>
oft::MatrixView<Element> matrix_of(const AnyArray& a, const char* name) {
  using Scalar = std::remove_const_t<Element>;
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error((std::string(name) + " " + shape_of(a) +
                           " is not on the CPU (this oft._core is the CPU backend)")
                              .c_str());
  }
  if (a.dtype() != dtype_of<Scalar>()) {
    throw nb::type_error((std::string(name) + " " + shape_of(a) + " is " + dtype_name(a.dtype()) +
                          ", expected " + dtype_name<Scalar>() + " like the other arguments")
                             .c_str());
  }
  if (a.ndim() != 2) {
    throw nb::value_error((std::string(name) + " has shape " + shape_of(a) +
                           ", expected a 2-D array (rows x features)")
                              .c_str());
  }
  const auto rows = static_cast<oft::Index>(a.shape(0));
  const auto cols = static_cast<oft::Index>(a.shape(1));
  const auto col_stride = static_cast<oft::Index>(a.stride(1));
  oft::Index row_stride = static_cast<oft::Index>(a.stride(0));
  if (rows <= 1) row_stride = cols;  // the stride of a single row is meaningless (torch sets 1)
  if ((cols > 1 && col_stride != 1) || row_stride < cols) {
    std::ostringstream msg;
    msg << name << " " << shape_of(a) << " has strides [" << a.stride(0) << ", " << a.stride(1)
        << "] (elements): oft needs unit column stride and a row stride >= the width "
        << "(call .contiguous() first)";
    throw nb::value_error(msg.str().c_str());
  }
  return oft::MatrixView<Element>(static_cast<Element*>(a.data()), rows, cols, row_stride);
}

template <class Element>
oft::GeneratorView<Element> generators_of(const AnyArray& a, const char* name) {
  return oft::GeneratorView<Element>(matrix_of<Element>(a, name));
}

/// A parameterization chosen from Python (oft::AnyPolicy).
struct Policy {
  oft::AnyPolicy value;
};

std::string describe(const oft::AnyPolicy& p) {
  return std::visit(
      [](const auto& q) -> std::string {
        using P = std::decay_t<decltype(q)>;
        if constexpr (std::is_same_v<P, oft::CayleyNeumann>) {
          return "Policy.cayley_neumann(k=" + std::to_string(q.terms) + ")";
        } else if constexpr (std::is_same_v<P, oft::peft::NeumannBranch>) {
          return "Policy.peft_neumann(num_terms=" + std::to_string(q.terms) +
                 (q.form == oft::peft::NeumannForm::Legacy ? ", legacy=True)" : ")");
        } else if constexpr (std::is_same_v<P, oft::CayleyNeumannTolerance>) {
          return "Policy.tolerance(tol=" + std::to_string(q.tolerance) + ")";
        } else if constexpr (std::is_same_v<P, oft::ExactCayley>) {
          return "Policy.cayley()";
        } else {
          return "Policy.exponential()";
        }
      },
      p);
}

/// The names that Python uses for oft::Bf16Arithmetic.
const char* arithmetic_name(oft::Bf16Arithmetic a) {
  return a == oft::Bf16Arithmetic::Float ? "float" : "dot_product";
}
oft::Bf16Arithmetic parse_arithmetic(const std::string& name) {
  if (name == "float") return oft::Bf16Arithmetic::Float;
  if (name == "dot_product") return oft::Bf16Arithmetic::DotProduct;
  throw nb::value_error(
      ("bf16_arithmetic must be 'float' or 'dot_product', got '" + name + "'").c_str());
}

/// BlockOrthogonal for a policy chosen at run time, with the Python checks in front. The float32
/// operator also takes bfloat16 activations: each call follows the dtype of its x.
template <class Scalar>
class Rotation {
 public:
  Rotation(oft::Index features, oft::Index block_size, bool shared, const Policy& policy)
      : op_(oft::BlockSpec::from_features(features, block_size, shared), policy.value) {}

  oft::Index features() const { return op_.features(); }
  oft::Index block_size() const { return op_.spec().block_size; }
  oft::Index blocks() const { return op_.spec().blocks; }
  oft::Index generators() const { return op_.spec().generators(); }
  bool shared() const { return op_.spec().shared; }
  std::string policy() const { return describe(op_.policy()); }

  void set_generators(const AnyArray& theta) {
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
    nb::gil_scoped_release release;
    op_.apply_inverse(xv, yv, transposed);
  }

  void backward(const AnyArray& x, const AnyArray& dy, std::optional<AnyArray> dx,
                std::optional<AnyArray> dtheta) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>())
        return backward_as<oft::bfloat16>(x, dy, dx, dtheta);
    }
    backward_as<Scalar>(x, dy, dx, dtheta);
  }

  void backward_from_blocks(const AnyArray& block_gradients, const AnyArray& dtheta) const {
    const auto gv = matrix_of<const Scalar>(block_gradients, "block_gradients");
    const auto dthetav = generators_of<Scalar>(dtheta, "dtheta");
    nb::gil_scoped_release release;
    op_.backward_from_block_gradients(gv, dthetav);
  }

  /// R_i of every block, stacked as (r*b) x b rows into `out`.
  void rotation_blocks(const AnyArray& out) const {
    const auto ov = matrix_of<Scalar>(out, "out");
    const oft::Index b = block_size();
    if (ov.rows() != blocks() * b || ov.cols() != b) {
      throw nb::value_error(("out " + shape_of(out) + " must be [" + std::to_string(blocks() * b) +
                             ", " + std::to_string(b) + "] (r*b rows of R_i)")
                                .c_str());
    }
    for (oft::Index i = 0; i < blocks(); ++i) ov.block(i * b, 0, b, b).map() = op_.block(i);
  }

  double orthogonality_error() const { return op_.orthogonality_error(); }

  std::string bf16_arithmetic() const { return arithmetic_name(op_.bf16_arithmetic()); }
  void set_bf16_arithmetic(const std::string& name) {
    op_.set_bf16_arithmetic(parse_arithmetic(name));
  }

 private:
  /// apply with activations of type Act (Scalar, or bfloat16 for the float32 operator).
  template <class Act>
  void apply_as(const AnyArray& x, const AnyArray& y, bool transposed) const {
    const auto xv = matrix_of<const Act>(x, "x");
    const auto yv = matrix_of<Act>(y, "y");
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
    const oft::GeneratorView<Scalar> dthetav =
        dtheta ? generators_of<Scalar>(*dtheta, "dtheta") : oft::GeneratorView<Scalar>();
    nb::gil_scoped_release release;
    oft::Workspace<Scalar> workspace;  // per call: backward stays safe from several threads
    op_.backward(xv, dyv, dxv, dthetav, workspace);
  }

  oft::AnyBlockOrthogonal<Scalar> op_;
};

template <class Scalar>
void bind_rotation(nb::module_& m, const char* name) {
  using R = Rotation<Scalar>;
  nb::class_<R> cls(m, name);
  cls.def(nb::init<oft::Index, oft::Index, bool, const Policy&>(), nb::arg("features"),
          nb::arg("block_size"), nb::arg("shared") = false, nb::arg("policy"))
      .def_prop_ro("features", &R::features)
      .def_prop_ro("block_size", &R::block_size)
      .def_prop_ro("blocks", &R::blocks)
      .def_prop_ro("generators", &R::generators)
      .def_prop_ro("shared", &R::shared)
      .def_prop_ro("policy", &R::policy)
      .def("set_generators", &R::set_generators, nb::arg("theta"),
           "theta -> R_i (theta: [generators, b(b-1)/2]).")
      .def("apply", &R::apply, nb::arg("x"), nb::arg("y"), nb::arg("transposed") = false,
           "y = x R (or x R^T); y may be x itself.")
      .def("apply_inverse", &R::apply_inverse, nb::arg("x"), nb::arg("y"),
           nb::arg("transposed") = false, "y = x R^-1 (or x R^-T), per-block LU.")
      .def("backward", &R::backward, nb::arg("x"), nb::arg("dy"), nb::arg("dx").none(),
           nb::arg("dtheta").none(),
           "dx = dy R^T and dtheta = d<dy, x R>/dtheta; pass None to skip either.")
      .def("backward_from_blocks", &R::backward_from_blocks, nb::arg("block_gradients"),
           nb::arg("dtheta"), "dtheta from dL/dR_i stacked as [r*b, b].")
      .def("rotation_blocks", &R::rotation_blocks, nb::arg("out"),
           "Writes R_i of every block, stacked as [r*b, b].")
      .def("orthogonality_error", &R::orthogonality_error);
  if constexpr (std::is_same_v<Scalar, float>) {
    cls.def_prop_rw("bf16_arithmetic", &R::bf16_arithmetic, &R::set_bf16_arithmetic,
                    "How bfloat16 activations are computed: 'float' (widen, the float32 kernels, "
                    "round once: bitwise the float32 path's rounding) or 'dot_product' "
                    "(vdpbf16ps; within the bound of docs/bf16.md; the default where the build "
                    "has AVX512_BF16).");
  }
}


#ifdef OFT_PYTHON_CUDA
/// A device array argument: pointer and row stride, after the same checks as matrix_of (CUDA
/// device, dtype, 2-D, rows x cols when given, unit column stride).
struct DeviceArg {
  void* data;
  oft::Index ld;
};

DeviceArg device_matrix(const AnyArray& a, const char* name, const nb::dlpack::dtype& dtype,
                        const char* dtype_label, oft::Index rows, oft::Index cols) {
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
  if (a.ndim() != 2 || static_cast<oft::Index>(a.shape(0)) != rows ||
      static_cast<oft::Index>(a.shape(1)) != cols) {
    throw nb::value_error((std::string(name) + " has shape " + shape_of(a) + ", expected [" +
                           std::to_string(rows) + ", " + std::to_string(cols) + "]")
                              .c_str());
  }
  oft::Index ld = static_cast<oft::Index>(a.stride(0));
  if (rows <= 1) ld = cols;
  if ((cols > 1 && a.stride(1) != 1) || ld < cols) {
    throw nb::value_error((std::string(name) + " " + shape_of(a) +
                           " needs unit column stride and a row stride >= the width")
                              .c_str());
  }
  return {a.data(), ld};
}

/// oft_python::CudaRotation with the Python checks in front (shapes from the operator).
class PyCudaRotation {
 public:
  PyCudaRotation(oft::Index features, oft::Index block_size, bool shared, bool exact, int k,
                 const std::string& dtype)
      : features_(features), dtype_(parse(dtype)), dtype_label_(dtype),
        op_(features, block_size, shared, exact, k, dtype_) {}

  bool tensor_cores() const { return op_.tensor_cores(); }

  void set_generators(const AnyArray& theta, std::uintptr_t stream) {
    const DeviceArg t = device_matrix(theta, "theta", parameter_dtype(), parameter_label(),
                                      op_.generators(), op_.packed());
    op_.set_generators(t.data, t.ld, stream);
  }

  void apply(const AnyArray& x, const AnyArray& y, bool transposed, std::uintptr_t stream) const {
    const oft::Index rows = x.ndim() == 2 ? static_cast<oft::Index>(x.shape(0)) : -1;
    const DeviceArg xa = device_matrix(x, "x", activation_dtype(), dtype_label_.c_str(), rows, features_);
    const DeviceArg ya = device_matrix(y, "y", activation_dtype(), dtype_label_.c_str(), rows, features_);
    op_.apply(xa.data, xa.ld, ya.data, ya.ld, rows, transposed, stream);
  }

  std::size_t workspace_bytes(oft::Index rows) const { return op_.workspace_bytes(rows); }

  void backward(const AnyArray& x, const AnyArray& dy, std::optional<AnyArray> dx,
                std::optional<AnyArray> dtheta, const AnyArray& workspace,
                std::uintptr_t stream) const {
    const oft::Index rows = dy.ndim() == 2 ? static_cast<oft::Index>(dy.shape(0)) : -1;
    const auto t = activation_dtype();
    const char* label = dtype_label_.c_str();
    const DeviceArg xa = device_matrix(x, "x", t, label, rows, features_);
    const DeviceArg dya = device_matrix(dy, "dy", t, label, rows, features_);
    const DeviceArg dxa = dx ? device_matrix(*dx, "dx", t, label, rows, features_) : DeviceArg{nullptr, 0};
    const DeviceArg dtha = dtheta ? device_matrix(*dtheta, "dtheta", parameter_dtype(), parameter_label(),
                                                  op_.generators(), op_.packed())
                                  : DeviceArg{nullptr, 0};
    if (workspace.device_type() != nb::device::cuda::value || workspace.ndim() != 1 ||
        workspace.dtype() != nb::dtype<uint8_t>()) {
      throw nb::value_error("workspace must be a 1-D uint8 CUDA tensor");
    }
    op_.backward(xa.data, xa.ld, dya.data, dya.ld, dxa.data, dxa.ld, dtha.data, dtha.ld,
                 workspace.data(), workspace.shape(0), rows, stream);
  }

 private:
  static oft_python::CudaDtype parse(const std::string& dtype) {
    if (dtype == "float32") return oft_python::CudaDtype::Float32;
    if (dtype == "float64") return oft_python::CudaDtype::Float64;
    if (dtype == "float16") return oft_python::CudaDtype::Float16;
    if (dtype == "bfloat16") return oft_python::CudaDtype::Bfloat16;
    throw nb::type_error(("CudaRotation: dtype " + dtype +
                          " is not float32, float64, float16 or bfloat16").c_str());
  }
  nb::dlpack::dtype activation_dtype() const {
    switch (dtype_) {
      case oft_python::CudaDtype::Float64: return nb::dtype<double>();
      case oft_python::CudaDtype::Float16: return {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
      case oft_python::CudaDtype::Bfloat16: return {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
      default: return nb::dtype<float>();
    }
  }
  nb::dlpack::dtype parameter_dtype() const {
    return dtype_ == oft_python::CudaDtype::Float64 ? nb::dtype<double>() : nb::dtype<float>();
  }
  const char* parameter_label() const {
    return dtype_ == oft_python::CudaDtype::Float64 ? "float64" : "float32";
  }

  oft::Index features_;
  oft_python::CudaDtype dtype_;
  std::string dtype_label_;
  oft_python::CudaRotation op_;
};
#endif  // OFT_PYTHON_CUDA

}  // namespace

NB_MODULE(_core, m) {
  m.doc() =
      "oft's CPU rotation kernels (float32, float64, bfloat16 activations) over DLPack arrays";

  nb::class_<Policy>(m, "Policy")
      .def_static("cayley", [] { return Policy{oft::ExactCayley{}}; },
                  "Exact Cayley R = (I + Q)(I - Q)^-1.")
      .def_static("cayley_neumann", [](int k) { return Policy{oft::CayleyNeumann{k}}; },
                  nb::arg("k"), "Cayley-Neumann R_k = I + 2Q + ... + 2Q^k + Q^(k+1).")
      .def_static(
          "peft_neumann",
          [](int num_terms, bool legacy) {
            return Policy{oft::peft::NeumannBranch{
                num_terms, legacy ? oft::peft::NeumannForm::Legacy : oft::peft::NeumannForm::Current}};
          },
          nb::arg("num_terms"), nb::arg("legacy") = false,
          "PEFT's Neumann branch with num_cayley_neumann_terms = T (any T >= 0).")
      .def_static(
          "tolerance",
          [](double tol, bool fall_back_to_exact) {
            return Policy{oft::CayleyNeumannTolerance{
                tol, fall_back_to_exact ? oft::OnDivergence::UseExactCayley : oft::OnDivergence::Throw}};
          },
          nb::arg("tol"), nb::arg("fall_back_to_exact") = false,
          "The fewest Neumann terms whose bound keeps ||R_k - R|| <= tol.")
      .def_static("exponential", [] { return Policy{oft::MatrixExponential{}}; },
                  "R = exp(Q) (for comparison with the Cayley maps).")
      .def_prop_ro("name", [](const Policy& p) { return oft::policy_name(p.value); })
      .def("__repr__", [](const Policy& p) { return describe(p.value); });

  bind_rotation<float>(m, "RotationFloat32");
  bind_rotation<double>(m, "RotationFloat64");
  m.attr("has_bf16_dot_product") = oft::kBf16DotProductAvailable;

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
  nb::class_<PyCudaRotation>(m, "CudaRotation")
      .def(nb::init<oft::Index, oft::Index, bool, bool, int, const std::string&>(),
           nb::arg("features"), nb::arg("block_size"), nb::arg("shared"), nb::arg("exact"),
           nb::arg("k"), nb::arg("dtype"))
      .def_prop_ro("tensor_cores", &PyCudaRotation::tensor_cores)
      .def("set_generators", &PyCudaRotation::set_generators, nb::arg("theta"), nb::arg("stream"))
      .def("apply", &PyCudaRotation::apply, nb::arg("x"), nb::arg("y"), nb::arg("transposed"),
           nb::arg("stream"))
      .def("workspace_bytes", &PyCudaRotation::workspace_bytes, nb::arg("rows"))
      .def("backward", &PyCudaRotation::backward, nb::arg("x"), nb::arg("dy"),
           nb::arg("dx").none(), nb::arg("dtheta").none(), nb::arg("workspace"),
           nb::arg("stream"));
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
