#pragma once
/// \file io/peft_conv.hpp
/// Hugging Face PEFT's Conv2d OFT modules, read with PEFT's meaning only where that meaning is
/// self-consistent (its unmerged forward equals the forward of the weight its merge writes),
/// refused otherwise with the reason. Facts measured with peft 0.21.2
/// (`peft/tuners/oft/layer.py`: Conv2d.update_layer, merge; OFTRotationModule._unfold, _fold,
/// forward) by tests/conv/measure_peft_conv.py; docs/dialects.md section 7 has the table.
///
/// A PEFT Conv2d module stores `<m>.oft_R.weight` like a Linear one (PeftOftAdapter reads it
/// as PeftModuleKind::Linear: the file cannot tell them apart), sized for C * kh * kh features
/// (PEFT uses kernel_size[0] twice). Its forward rotates every stride-1, unpadded kh x kw patch
/// of the input, folds the patches back into an image by summation and convolves that; its merge
/// writes W_flat R^T. So:
///   - 1x1 kernel: a patch is one pixel's channel vector and the fold a copy; the rotation
///     commutes with any stride and with zero padding: self-consistent, and the merge is
///     oft::conv::merge (PEFT's Linear merge over the channels). Measured: 4.4e-16 in double.
///   - k x k, k > 1: each pixel becomes the sum of up to k^2 rotated patch copies; the merged
///     weight reproduces that only on an input of exactly k x k without padding. Refused
///     (measured: 5.7 on an 8x8 input whose outputs reach 2.5).
///   - kh != kw: PEFT's own forward and merge raise (C kh kh features against patches of
///     C kh kw). Refused.
///   - dilation > 1: PEFT refuses to create the adapter. Refused.
///
///   auto adapter = oft::io::PeftOftAdapter::load("dir/");
///   const auto& m = adapter.module("unet.conv_in");
///   oft::io::PeftConv2dBase base{320, 4, 1, 1};
///   if (oft::io::peft_conv2d_verdict(m, base).self_consistent)
///     merged = oft::io::merge_peft_conv2d(adapter, m, base, oft::view(w_flat));

#include <stdexcept>
#include <string>

#include "../errors.hpp"
#include "../index.hpp"
#include "../view.hpp"
#include "peft_adapter.hpp"

namespace oft::io {

/// The base nn.Conv2d's fields that decide the verdict (stride and padding do not: a 1x1
/// kernel is consistent with every stride and padding, a larger one with none).
struct PeftConv2dBase {
  Index out_channels = 0;
  Index in_channels = 0;
  Index kernel_h = 1;
  Index kernel_w = 1;
  Index dilation_h = 1;
  Index dilation_w = 1;
};

/// Whether module `m` over `base` is self-consistent in PEFT, and if not, why (one line naming
/// the module and the shapes).
struct PeftConv2dVerdict {
  bool self_consistent = false;
  std::string reason;  ///< empty when self-consistent
};

inline PeftConv2dVerdict peft_conv2d_verdict(const PeftOftModule& m, const PeftConv2dBase& base) {
  using oft::detail::message;
  PeftConv2dVerdict v;
  const std::string where =
      message("PEFT Conv2d OFT module '", m.name, "' on Conv2d(", base.in_channels, ", ",
              base.out_channels, ", kernel ", base.kernel_h, "x", base.kernel_w, ")");
  if (m.kind != PeftModuleKind::Linear) {
    v.reason = message(where, ": an embedding's tensor (oft_embedding_R), not a Conv2d's");
    return v;
  }
  if (base.in_channels < 1 || base.out_channels < 1 || base.kernel_h < 1 || base.kernel_w < 1) {
    v.reason = message(where, ": not a Conv2d shape");
    return v;
  }
  if (base.dilation_h != 1 || base.dilation_w != 1) {
    v.reason = message(where, ": dilation ", base.dilation_h, "x", base.dilation_w,
                       "; PEFT refuses dilation > 1 when it creates the adapter, so no PEFT "
                       "file holds one for this layer");
    return v;
  }
  // PEFT's conv_filter_dim: in_channels * kernel_size[0] * kernel_size[0].
  const Index peft_features = base.in_channels * base.kernel_h * base.kernel_h;
  const Index b = m.spec.block_size;
  const bool fits = m.spec.shared ? peft_features % b == 0 : m.spec.features() == peft_features;
  if (!fits) {
    v.reason = message(
        where, ": the adapter rotates ",
        m.spec.shared ? message("a multiple of b=", b)
                      : message(m.spec.features(), " features (r=", m.spec.blocks, ", b=", b, ")"),
        ", PEFT sizes this layer's as C*kh*kh = ", peft_features, ": another layer's adapter?");
    return v;
  }
  if (base.kernel_h != base.kernel_w) {
    v.reason = message(
        where, ": a non-square kernel; PEFT sizes the rotation as C*kh*kh = ", peft_features,
        " but a patch has C*kh*kw = ", base.in_channels * base.kernel_h * base.kernel_w,
        ", and its own forward and merge raise on this layer");
    return v;
  }
  if (base.kernel_h > 1) {
    v.reason = message(
        where, ": PEFT's unmerged forward rotates every stride-1 ", base.kernel_h, "x",
        base.kernel_w,
        " patch and sums the overlapping patches back into the image (F.fold), "
        "which its merged weight W R^T reproduces only for an input of exactly the kernel's size "
        "without padding (measured with peft 0.21.2: 5.7 apart on an 8x8 input whose outputs "
        "reach 2.5); no weight gives the adapter's trained outputs. oft::conv::merge computes "
        "what PEFT's merge() writes, if that is wanted");
    return v;
  }
  v.self_consistent = true;
  return v;
}

/// The merged weight of a self-consistent (1x1) PEFT Conv2d module: W'_flat = W_flat R^T over
/// `weight_flat` [O, C] (the kernel [O, C, 1, 1] with its unit dims dropped), at oft's strength
/// (R(sQ), SPEC section 8; PEFT has none: 1 is its merge). Equal to PEFT's merge and to
/// oft::conv::merge with the adapter's operator. Throws std::invalid_argument with the
/// verdict's reason for any other module, or when `weight_flat` is not [O, C].
inline RowMatrix<float> merge_peft_conv2d(const PeftOftAdapter& adapter, const PeftOftModule& m,
                                          const PeftConv2dBase& base,
                                          ConstMatrixView<float> weight_flat,
                                          double strength = 1.0) {
  const PeftConv2dVerdict v = peft_conv2d_verdict(m, base);
  if (!v.self_consistent) throw std::invalid_argument(v.reason);
  oft::detail::require(
      weight_flat.rows() == base.out_channels && weight_flat.cols() == base.in_channels,
      "PEFT Conv2d OFT module '", m.name, "': the weight is ", weight_flat.rows(), "x",
      weight_flat.cols(), ", the layer's flattened kernel is ", base.out_channels, "x",
      base.in_channels);
  return adapter.merge(m, weight_flat, strength);
}

}  // namespace oft::io
