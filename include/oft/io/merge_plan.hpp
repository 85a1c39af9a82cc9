#pragma once
/// \file io/merge_plan.hpp
/// Where each module of a PEFT OFT, BOFT or HRA adapter lands in a model directory, checked before
/// anything is written: each module finds exactly one 2-D floating-point base tensor (or a layer
/// stored by bitsandbytes, or for PEFT OFT a 1x1 Conv2d weight, the one Conv2d kind PEFT's own
/// forward and merge agree on) of a width its rotation fits, and no two modules share one.

#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model_directory.hpp"
#include "peft_adapter.hpp"
#include "peft_conv.hpp"
#include "peft_family_adapter.hpp"
#include "quantized_weights.hpp"

namespace oft::io {

/// One adapter module's base tensor in the model: its file and view.
struct MergeTarget {
  const PeftOftModule* module = nullptr;  ///< the OFT module, or null for a BOFT/HRA adapter
  const PeftFamilyModule* family_module = nullptr;  ///< the BOFT/HRA module, or null
  std::string module_name;
  std::size_t file = 0;  ///< index into ModelDirectory::files
  TensorView view;
  bool quantized = false;  ///< stored by bitsandbytes (quant_state or SCB beside the weight)
};

namespace detail {

/// The base tensor of adapter module `module` (a module path), checked as plan_merge_targets
/// says; `conv_reason` ends the refusal of a 4-D base, unless `peft_conv` (a PEFT OFT module) is
/// given: then a 4-D [out, in, kh, kw] weight is taken where PEFT's Conv2d OFT is
/// self-consistent (io/peft_conv.hpp: a 1x1 kernel, merged as the [out, in] Linear it is) and
/// refused with peft_conv2d_verdict's reason otherwise; `fits(rows, cols)` throws when the
/// module's rotation does not fit the 2-D float weight.
template <class Fits>
MergeTarget find_merge_target(const ModelDirectory& base, const std::string& module,
                              const std::map<std::string, MergeTarget>& targets,
                              std::string& tensor_name, const char* conv_reason, const Fits& fits,
                              const PeftOftModule* peft_conv = nullptr) {
  const std::map<std::string, std::size_t>& where = base.where;
  const std::string exact = module + ".weight";
  std::vector<std::string> candidates;
  if (where.count(exact) != 0) {
    candidates.push_back(exact);
  } else {
    const std::string tail = "." + exact;
    for (const auto& [name, file] : where)
      if (name.size() > tail.size() &&
          name.compare(name.size() - tail.size(), tail.size(), tail) == 0)
        candidates.push_back(name);
    // A module path with a prefix the base lacks (e.g. adapted `model.x`, saved `x`).
    for (std::size_t dot = module.find('.'); candidates.empty() && dot != std::string::npos;
         dot = module.find('.', dot + 1))
      if (where.count(module.substr(dot + 1) + ".weight") != 0)
        candidates.push_back(module.substr(dot + 1) + ".weight");
  }
  if (candidates.empty() && where.count(module + ".qweight") != 0)
    throw std::invalid_argument(oft::detail::message(
        "oft: adapter module '", module, "' is stored as GPTQ/AWQ int4 ('", module,
        ".qweight'): requantizing a merge needs GPTQ/AWQ's calibration-based quantizer, which "
        "oft does not "
        "have; merge into the float model, or keep the adapter unmerged (QoftLinear runs on the "
        "int4 base)"));
  if (candidates.empty())
    throw std::invalid_argument(oft::detail::message(
        "oft: the base has no tensor for adapter module '", module, "' (looked for '", exact,
        "' and '*.", exact, "'): an adapter for another model?"));
  if (candidates.size() > 1)
    throw std::invalid_argument(oft::detail::message(
        "oft: adapter module '", module, "' matches ", candidates.size(), " base tensors ('",
        candidates[0], "', '", candidates[1], "', ...): ambiguous"));
  const std::string& name = candidates.front();
  if (targets.count(name) != 0)
    throw std::invalid_argument(oft::detail::message(
        "oft: adapter modules '", targets.at(name).module_name, "' and '", module,
        "' both target base tensor '", name, "'"));
  MergeTarget t;
  t.module_name = module;
  t.file = where.at(name);
  t.view = base.files[t.file].tensor(name);
  t.quantized =
      stored_by_bitsandbytes(base, name.substr(0, name.size() - std::string(".weight").size()));
  tensor_name = name;
  if (t.quantized) return t;  // its shape comes from the quant_state (checked when it is read)
  const std::string at = oft::detail::message("base tensor '", name, "' (", t.view.file, ")");
  if (t.view.shape.size() == 4 && peft_conv != nullptr) {
    const auto dim = [&](std::size_t i) { return static_cast<Index>(t.view.shape[i]); };
    const PeftConv2dVerdict verdict =
        peft_conv2d_verdict(*peft_conv, PeftConv2dBase{dim(0), dim(1), dim(2), dim(3)});
    if (!verdict.self_consistent)
      throw std::invalid_argument(oft::detail::message("oft: ", at, ": ", verdict.reason));
  } else if (t.view.shape.size() == 4) {
    throw std::invalid_argument(oft::detail::message(
        "oft: ", at,
        " is 4-D, a Conv2d weight: oft does not merge Conv2d ", conv_reason));
  }
  if (t.view.shape.size() != 2 && t.view.shape.size() != 4)
    throw std::invalid_argument(oft::detail::message("oft: ", at, " has ", t.view.shape.size(),
                                                     " dimensions; module '", module,
                                                     "' needs a 2-D weight"));
  const Dtype d = t.view.dtype;
  if (d != Dtype::F32 && d != Dtype::F16 && d != Dtype::BF16)
    throw std::invalid_argument(
        oft::detail::message("oft: ", at, " is ", dtype_name(t.view.dtype),
                             "; merging needs F32, F16 or BF16, or a quantized layer stored by "
                             "bitsandbytes (no quant_state or SCB "
                             "found beside it)"));
  fits(static_cast<Index>(t.view.shape[0]), static_cast<Index>(t.view.shape[1]));
  return t;
}

}  // namespace detail

/// The base tensor of every module of `adapter`, by base tensor name. A module `m` finds
/// `<m>.weight`, or else the one tensor ending in `.<m>.weight` (a model saved with a prefix such
/// as `bert.`, adapted without it), or `<m without its first components>.weight` (the other way
/// round). Throws std::invalid_argument naming the module and the tensors when none or several
/// match, when two modules share one, when a layer is GPTQ/AWQ int4 (requantizing needs their
/// calibration), or when the tensor is not a 2-D F32/F16/BF16 weight of a width the module's
/// rotation fits. The returned targets point into `adapter` and `base`, which must outlive them.
inline std::map<std::string, MergeTarget> plan_merge_targets(const ModelDirectory& base,
                                                             const PeftOftAdapter& adapter) {
  std::map<std::string, MergeTarget> targets;
  for (const PeftOftModule& m : adapter.modules) {
    std::string name;
    // A 4-D base: PEFT's Conv2d OFT where it is self-consistent (1x1), refused otherwise.
    MergeTarget t = detail::find_merge_target(
        base, m.name, targets, name, "",
        [&](Index rows, Index cols) { (void)PeftOftAdapter::spec_for(m, rows, cols); }, &m);
    t.module = &m;
    targets.emplace(name, std::move(t));
  }
  return targets;
}

/// The same for a PEFT BOFT or HRA adapter: each module's base weight must be [n_out, d] with d
/// its rotation's features and, for BOFT, n_out the length of boft_s.
inline std::map<std::string, MergeTarget> plan_merge_targets(const ModelDirectory& base,
                                                             const PeftFamilyAdapter& adapter) {
  std::map<std::string, MergeTarget> targets;
  for (const PeftFamilyModule& m : adapter.modules) {
    std::string name;
    const char* conv = adapter.family() == PeftFamily::Boft
                           ? "BOFT adapters (oft reads nn.Linear ones only; see docs/io.md)"
                           : "HRA adapters (oft reads nn.Linear ones only; see docs/io.md)";
    MergeTarget t = detail::find_merge_target(base, m.name, targets, name, conv, [&](Index rows, Index cols) {
      PeftFamilyAdapter::check_base(m, rows, cols);
    });
    t.family_module = &m;
    targets.emplace(name, std::move(t));
  }
  return targets;
}

}  // namespace oft::io
