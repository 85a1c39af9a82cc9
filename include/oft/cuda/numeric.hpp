#pragma once
/// \file cuda/numeric.hpp
/// Activation types of the CUDA backend and their accumulation types.
///
/// | activations T        | generators theta, rotation blocks R, gradients | accumulation |
/// |----------------------|------------------------------------------------|--------------|
/// | float                | float                                          | float        |
/// | double               | double                                         | double       |
/// | __half, __nv_bfloat16| float                                          | float        |
///
/// Half-precision activations are read, converted to float, multiplied with float R and summed
/// in float; the result is rounded to T once, on store.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace oft {

/// Parameter and accumulation type for activations of type T (see the table above).
template <class T>
struct cuda_parameter {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                    std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                "oft CUDA backend: activations must be float, double, __half or __nv_bfloat16");
  using type = std::conditional_t<std::is_same_v<T, double>, double, float>;
};
template <class T>
using cuda_parameter_t = typename cuda_parameter<T>::type;

/// True for the 16-bit activation types (tensor-core path for block sizes that are multiples of 16).
template <class T>
inline constexpr bool is_half_precision_v =
    std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

namespace detail::cuda {

template <class Acc>
__device__ __forceinline__ Acc to_accumulator(float x) { return static_cast<Acc>(x); }
template <class Acc>
__device__ __forceinline__ Acc to_accumulator(double x) { return static_cast<Acc>(x); }
template <class Acc>
__device__ __forceinline__ Acc to_accumulator(__half x) { return static_cast<Acc>(__half2float(x)); }
template <class Acc>
__device__ __forceinline__ Acc to_accumulator(__nv_bfloat16 x) {
  return static_cast<Acc>(__bfloat162float(x));
}

template <class T>
struct Store;
template <>
struct Store<float> {
  __device__ __forceinline__ static float from(float x) { return x; }
};
template <>
struct Store<double> {
  __device__ __forceinline__ static double from(double x) { return x; }
};
template <>
struct Store<__half> {
  __device__ __forceinline__ static __half from(float x) { return __float2half_rn(x); }
};
template <>
struct Store<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

/// Rounds an accumulator to the activation type T (round to nearest even).
template <class T, class Acc>
__device__ __forceinline__ T from_accumulator(Acc x) {
  return Store<T>::from(x);
}

}  // namespace detail::cuda
}  // namespace oft
