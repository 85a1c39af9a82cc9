#pragma once
/// \file cuda/bank_types.hpp
/// oft::FeatureRange and oft::BankRouting for nvcc-compiled code. Both are defined, token for
/// token, in cpu/adapter_bank.hpp, which a .cu file cannot include (it pulls in Eigen); the
/// one-definition rule allows such identical definitions in different translation units, so a
/// program may link CPU and CUDA banks that exchange these values. A translation unit must not
/// include both headers. They belong in one Eigen-free header shared by both backends (a move
/// outside the CUDA backend's folder); until then, change neither copy without the other.

#include "../config.hpp"

namespace oft {

struct FeatureRange {
  Index first = 0;
  Index count = 0;
};

enum class BankRouting {
  Automatic,
  Contiguous,
  Gathered,
};

}  // namespace oft
