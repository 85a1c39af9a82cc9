// oft._core.AdapterBank: oft::AdapterBank (include/oft/adapter_bank.hpp) for Python, a thin shell
// over the C++ bank whose tests (tests/serving/) cover the arithmetic, the routing and the
// concurrency. Everything here is argument checking: each array is checked (device, dtype,
// shape, strides) with an error naming it before the bank sees a pointer, because the bank's
// add reads spec.generators() blocks from a raw pointer and cannot check the length itself.
// A float32 bank also takes bfloat16 activations (x and y), as oft._core.Rotation does, computed
// in the bank's bf16_arithmetic ("float" or "dot_product"); R is kept in float32, or in bfloat16
// (storage "bfloat16"). The GIL is released while the bank works: apply waits for no Python object, and
// add/replace/remove may wait for applies in flight on other threads (the bank's writer lock).
#include "serving.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include <oft/adapter_bank.hpp>

#include "arrays.hpp"
#include "bf16_names.hpp"

namespace nb = nanobind;

namespace {

using oft_python::AnyArray;
using oft_python::array_of;
using oft_python::dtype_name;
using oft_python::dtype_of;
using oft_python::matrix_of;
using oft_python::shape_of;

oft::BankRouting parse_routing(const std::string& name) {
  if (name == "auto") return oft::BankRouting::Automatic;
  if (name == "contiguous") return oft::BankRouting::Contiguous;
  if (name == "gathered") return oft::BankRouting::Gathered;
  throw nb::value_error(
      ("routing must be 'auto', 'contiguous' or 'gathered', got '" + name + "'").c_str());
}

const char* routing_name(oft::BankRouting routing) {
  return routing == oft::BankRouting::Gathered ? "gathered" : "contiguous";
}

void require_cpu(const AnyArray& a, const char* name) {
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error((std::string(name) + " " + shape_of(a) +
                           " is not on the CPU (oft._core.AdapterBank is the CPU backend)")
                              .c_str());
  }
}

/// The adapter ids of apply: a 1-D int32 array, contiguous (the bank reads a raw pointer).
const std::int32_t* ids_of(const AnyArray& ids) {
  require_cpu(ids, "ids");
  if (ids.dtype() != nb::dtype<std::int32_t>()) {
    throw nb::type_error(("ids " + shape_of(ids) + " is " + dtype_name(ids.dtype()) +
                          ", expected int32 (one adapter slot per row of x, -1 for none)")
                             .c_str());
  }
  if (ids.ndim() != 1) {
    throw nb::value_error(
        ("ids has shape " + shape_of(ids) + ", expected a 1-D array (one slot per row of x)")
            .c_str());
  }
  if (ids.shape(0) > 1 && ids.stride(0) != 1) {
    throw nb::value_error(("ids " + shape_of(ids) + " has stride " + std::to_string(ids.stride(0)) +
                           " (elements): oft needs contiguous ids (call .contiguous() first)")
                              .c_str());
  }
  return static_cast<const std::int32_t*>(ids.data());
}

/// One bank of Scalar with the Python checks in front.
template <class Scalar>
class TypedBank {
 public:
  TypedBank(oft::Index features, oft::Index capacity, oft::FeatureRange shard,
            oft::RotationStorage storage, oft::Bf16Arithmetic arithmetic)
      : bank_(features, capacity, shard, storage, arithmetic) {}

  const oft::AdapterBank<Scalar>& bank() const { return bank_; }

  oft::Index add(oft::Index block_size, bool shared, const AnyArray& rotations) {
    const auto checked = check_rotations(block_size, shared, rotations);
    nb::gil_scoped_release release;
    return bank_.add(checked.spec, checked.data);
  }

  void replace(oft::Index slot, oft::Index block_size, bool shared, const AnyArray& rotations) {
    const auto checked = check_rotations(block_size, shared, rotations);
    nb::gil_scoped_release release;
    bank_.replace(slot, checked.spec, checked.data);
  }

  void remove(oft::Index slot) {
    nb::gil_scoped_release release;
    bank_.remove(slot);
  }

  std::string apply(const AnyArray& x, const AnyArray& y, const AnyArray& ids,
                    oft::BankRouting routing) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (x.dtype() == dtype_of<oft::bfloat16>())
        return apply_as<oft::bfloat16>(x, y, ids, routing);
    }
    return apply_as<Scalar>(x, y, ids, routing);
  }

 private:
  struct Rotations {
    oft::BlockSpec spec;
    const Scalar* data;
  };

  // R's blocks for the whole layer: [generators, b, b], Scalar, contiguous.
  Rotations check_rotations(oft::Index block_size, bool shared, const AnyArray& r) const {
    require_cpu(r, "rotations");
    if (r.dtype() != dtype_of<Scalar>()) {
      throw nb::type_error(("rotations " + shape_of(r) + " is " + dtype_name(r.dtype()) +
                            ", expected the bank's " + oft_python::dtype_name<Scalar>())
                               .c_str());
    }
    // from_features refuses b outside [1, kMaxBlockSize] or not dividing d (ValueError).
    const auto spec = oft::BlockSpec::from_features(bank_.features(), block_size, shared);
    const auto b = static_cast<std::int64_t>(block_size);
    if (r.ndim() != 3 || static_cast<oft::Index>(r.shape(0)) != spec.generators() ||
        static_cast<std::int64_t>(r.shape(1)) != b || static_cast<std::int64_t>(r.shape(2)) != b) {
      throw nb::value_error(("rotations has shape " + shape_of(r) + ", expected [" +
                             std::to_string(spec.generators()) + ", " + std::to_string(b) + ", " +
                             std::to_string(b) + "] (R's blocks for d = " +
                             std::to_string(bank_.features()) + ", b = " + std::to_string(b) +
                             (shared ? ", one shared block)" : ")"))
                                .c_str());
    }
    // Strides of a size-1 dimension are meaningless (torch may report anything there).
    const bool contiguous = (b == 1 || r.stride(2) == 1) && (b == 1 || r.stride(1) == b) &&
                            (r.shape(0) == 1 || r.stride(0) == b * b);
    if (!contiguous) {
      throw nb::value_error(("rotations " + shape_of(r) + " has strides [" +
                             std::to_string(r.stride(0)) + ", " + std::to_string(r.stride(1)) +
                             ", " + std::to_string(r.stride(2)) +
                             "] (elements): oft needs them contiguous (call .contiguous() first)")
                                .c_str());
    }
    return {spec, static_cast<const Scalar*>(r.data())};
  }

  template <class Act>
  std::string apply_as(const AnyArray& x, const AnyArray& y, const AnyArray& ids,
                       oft::BankRouting routing) const {
    const auto xv = matrix_of<const Act>(x, "x");
    const auto yv = matrix_of<Act>(y, "y");
    const std::int32_t* id_data = ids_of(ids);
    const auto id_count = static_cast<oft::Index>(ids.shape(0));
    nb::gil_scoped_release release;
    return routing_name(bank_.apply(xv, yv, id_data, id_count, routing));
  }

  oft::AdapterBank<Scalar> bank_;
};

/// oft._core.AdapterBank: a float32 or float64 bank, chosen by name at construction.
class AdapterBank {
 public:
  AdapterBank(oft::Index features, oft::Index capacity, const std::string& dtype,
              oft::Index shard_first, std::optional<oft::Index> shard_count,
              std::optional<std::string> storage, const std::string& bf16_arithmetic)
      : dtype_(dtype), storage_(storage ? *storage : dtype), arithmetic_(bf16_arithmetic) {
    const oft::FeatureRange shard{shard_first, shard_count ? *shard_count : features - shard_first};
    if (storage_ != dtype && !(storage_ == "bfloat16" && dtype == "float32")) {
      throw nb::value_error(("AdapterBank storage " + storage_ + " is not the bank's dtype " +
                             dtype + " (or bfloat16, for a float32 bank)")
                                .c_str());
    }
    const auto kept = storage_ == "bfloat16" ? oft::RotationStorage::BFloat16
                                             : oft::RotationStorage::Scalar;
    const oft::Bf16Arithmetic arithmetic = oft_python::parse_arithmetic(bf16_arithmetic);
    if (dtype == "float32") {
      bank_ = std::make_unique<TypedBank<float>>(features, capacity, shard, kept, arithmetic);
    } else if (dtype == "float64") {
      bank_ = std::make_unique<TypedBank<double>>(features, capacity, shard, kept, arithmetic);
    } else {
      throw nb::type_error(("AdapterBank dtype " + dtype +
                            " is not float32 or float64 (a float32 bank also takes bfloat16 "
                            "activations)")
                               .c_str());
    }
  }

  template <class F>
  decltype(auto) visit(F&& f) {
    return std::visit([&](auto& bank) -> decltype(auto) { return f(*bank); }, bank_);
  }
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit([&](const auto& bank) -> decltype(auto) { return f(*bank); }, bank_);
  }
  const std::string& dtype() const { return dtype_; }
  const std::string& storage() const { return storage_; }
  const std::string& bf16_arithmetic() const { return arithmetic_; }

 private:
  std::string dtype_, storage_, arithmetic_;
  std::variant<std::unique_ptr<TypedBank<float>>, std::unique_ptr<TypedBank<double>>> bank_;
};

}  // namespace

void bind_serving(nb::module_& m) {
  nb::class_<AdapterBank>(
      m, "AdapterBank",
      "Many OFT adapters' block-diagonal rotations for one layer (oft::AdapterBank, CPU): "
      "apply rotates row t of x by the adapter in slot ids[t] (-1: none). Forward only.")
      .def(nb::init<oft::Index, oft::Index, const std::string&, oft::Index,
                    std::optional<oft::Index>, std::optional<std::string>, const std::string&>(),
           nb::arg("features"), nb::arg("capacity"), nb::arg("dtype") = "float32",
           nb::arg("shard_first") = 0, nb::arg("shard_count").none() = nb::none(),
           nb::arg("storage").none() = nb::none(), nb::arg("bf16_arithmetic") = "float",
           "A bank of `capacity` slots for a layer of `features` inputs, holding features "
           "[shard_first, shard_first + shard_count) (default: from shard_first to the end); R "
           "kept in `storage` (the dtype, or bfloat16 for a float32 bank); bfloat16 activations "
           "computed in `bf16_arithmetic` ('float' or 'dot_product').")
      .def_prop_ro("features",
                   [](const AdapterBank& b) {
                     return b.visit([](const auto& t) { return t.bank().features(); });
                   })
      .def_prop_ro("capacity",
                   [](const AdapterBank& b) {
                     return b.visit([](const auto& t) { return t.bank().capacity(); });
                   })
      .def_prop_ro("shard_first",
                   [](const AdapterBank& b) {
                     return b.visit([](const auto& t) { return t.bank().shard().first; });
                   })
      .def_prop_ro("shard_count",
                   [](const AdapterBank& b) {
                     return b.visit([](const auto& t) { return t.bank().shard().count; });
                   })
      .def_prop_ro("dtype", &AdapterBank::dtype)
      .def_prop_ro("storage", &AdapterBank::storage)
      .def_prop_ro("bf16_arithmetic", &AdapterBank::bf16_arithmetic)
      .def(
          "add",
          [](AdapterBank& b, oft::Index block_size, bool shared, nb::handle rotations) {
            const AnyArray r = array_of(rotations, "rotations", false);
            return b.visit([&](auto& t) { return t.add(block_size, shared, r); });
          },
          nb::arg("block_size"), nb::arg("shared"), nb::arg("rotations"),
          "Adds R's blocks [generators, b, b] (Y = X R; one block when shared) in the lowest "
          "free slot and returns it.")
      .def(
          "replace",
          [](AdapterBank& b, oft::Index slot, oft::Index block_size, bool shared,
             nb::handle rotations) {
            const AnyArray r = array_of(rotations, "rotations", false);
            b.visit([&](auto& t) { t.replace(slot, block_size, shared, r); });
          },
          nb::arg("slot"), nb::arg("block_size"), nb::arg("shared"), nb::arg("rotations"),
          "Replaces the adapter in `slot` (which must hold one), as add takes it.")
      .def(
          "remove",
          [](AdapterBank& b, oft::Index slot) { b.visit([&](auto& t) { t.remove(slot); }); },
          nb::arg("slot"), "Frees `slot` (which must hold an adapter).")
      .def(
          "contains",
          [](const AdapterBank& b, oft::Index slot) {
            return b.visit([&](const auto& t) { return t.bank().contains(slot); });
          },
          nb::arg("slot"))
      .def("size",
           [](const AdapterBank& b) {
             return b.visit([](const auto& t) { return t.bank().size(); });
           },
           "Slots holding an adapter now.")
      .def("__len__",
           [](const AdapterBank& b) {
             return b.visit([](const auto& t) { return t.bank().size(); });
           })
      .def(
          "adapter_bytes",
          [](const AdapterBank& b, oft::Index slot) {
            return b.visit([&](const auto& t) { return t.bank().adapter_bytes(slot); });
          },
          nb::arg("slot"), "Bytes of R's blocks that `slot` holds (in this bank's shard).")
      .def(
          "block_size",
          [](const AdapterBank& b, oft::Index slot) {
            return b.visit([&](const auto& t) { return t.bank().block_size(slot); });
          },
          nb::arg("slot"))
      .def(
          "apply",
          [](const AdapterBank& b, nb::handle x, nb::handle y, nb::handle ids,
             const std::string& routing) {
            const oft::BankRouting r = parse_routing(routing);
            const AnyArray xa = array_of(x, "x", false), ya = array_of(y, "y", true);
            const AnyArray ia = array_of(ids, "ids", false);
            return b.visit([&](const auto& t) { return t.apply(xa, ya, ia, r); });
          },
          nb::arg("x"), nb::arg("y"), nb::arg("ids"), nb::arg("routing") = "auto",
          "y[t] = x[t] R_{ids[t]} (y may be x); ids: int32, one slot per row, -1 for none. "
          "Returns the routing used ('contiguous' or 'gathered').");
}
