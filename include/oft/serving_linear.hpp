#pragma once
/// \file serving_linear.hpp
/// A frozen linear layer serving many OFT adapters in one batch: Z = (X R_{a(t)}) W0^T + bias
/// row by row, each token t through its own adapter a(t) (AdapterBank, adapter_bank.hpp), one
/// shared base weight for every request.
///
/// Fused projections: W0 may stack several projections' rows (q/k/v of a fused QKV layer,
/// gate/up of a fused MLP), declared as `slices`; an adapter gives one operator per slice, or
/// none where it does not target that projection. Each slice's rotated input goes through that
/// slice's rows of W0 only, so the GEMMs together cost exactly one base GEMM; the alternative
/// (one rotated copy of X per slice stacked into a 3x batch through the whole fused weight, then
/// most of the output thrown away) costs three.
///
///   oft::ServingLinear<float> qkv(weight, bias, {1024, 256, 256}, 16);  // q, k, v rows
///   const Index id = qkv.add<oft::AnyBlockOrthogonal<float>>({&q_rotation, nullptr, &v_rotation});
///   qkv.forward(x, ids, z, workspace);  // ids: one adapter id (or -1) per row of x
///
/// Tensor parallelism (row-parallel): the constructor with a FeatureRange takes one rank's
/// columns of W0 and of X; the ranks' outputs sum to the layer's.
///
/// Concurrency: forward is const and may run on many threads at once, and beside add, replace
/// and remove (which are serialized among themselves); see adapter_bank.hpp.

#include "adapter_bank.hpp"
#include "cpu/serving_linear.hpp"
