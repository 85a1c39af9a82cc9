#pragma once
/// \file bank_types.hpp
/// The small value types of the adapter bank (adapter_bank.hpp) that both backends' banks take:
/// Eigen-free, so nvcc-compiled code (cuda/adapter_bank.hpp) includes them too.

#include "config.hpp"

namespace oft {

/// The columns of a layer's input that one tensor-parallel rank holds: features
/// [first, first + count) of d. Every adapter's block size must divide `first` and `count`.
struct FeatureRange {
  Index first = 0;
  Index count = 0;
};

/// How apply groups the tokens (BankRouting::Automatic picks one from the ids; the others force
/// it, for tests and benchmarks).
enum class BankRouting {
  Automatic,   ///< Contiguous when the runs of equal ids average a register tile or more
  Contiguous,  ///< runs of equal ids, rotated where they are (prefill: a request's tokens)
  Gathered,    ///< tokens grouped by adapter, copied into slices and back (decode)
};

/// How a bank keeps its adapters' R: in its Scalar, or (float banks) as bfloat16, rounded to
/// nearest even once when each adapter is added (half the memory and the traffic; each entry of
/// R within 2^-9 relative, so each output within about sqrt(b) 2^-9 |x| of the float32 bank's).
enum class RotationStorage { Scalar, BFloat16 };

}  // namespace oft
