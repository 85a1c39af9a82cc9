#pragma once
/// \file io/merge_plan.hpp
/// Where each module of a PEFT OFT adapter lands in a model directory, checked before anything is
/// written: each module finds exactly one 2-D floating-point base tensor (or a layer stored by
/// bitsandbytes) of a width its rotation fits, and no two modules share one.

#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model_directory.hpp"
#include "peft_adapter.hpp"
#include "quantized_weights.hpp"

namespace oft::io {

/// One adapter module's base tensor in the model: its file and view.
struct MergeTarget {
  const PeftOftModule* module = nullptr;
  std::size_t file = 0;  ///< index into ModelDirectory::files
  TensorView view;
  bool quantized = false;  ///< stored by bitsandbytes (quant_state or SCB beside the weight)
};

/// The base tensor of every module of `adapter`, by base tensor name. A module `m` finds
/// `<m>.weight`, or else the one tensor ending in `.<m>.weight` (a model saved with a prefix such
/// as `bert.`, adapted without it), or `<m without its first components>.weight` (the other way
/// round). Throws std::invalid_argument naming the module and the tensors when none or several
/// match, when two modules share one, when a layer is GPTQ/AWQ int4 (requantizing needs their
/// calibration), or when the tensor is not a 2-D F32/F16/BF16 weight of a width the module's
/// rotation fits. The returned targets point into `adapter` and `base`, which must outlive them.
inline std::map<std::string, MergeTarget> plan_merge_targets(const ModelDirectory& base,
                                                             const PeftOftAdapter& adapter) {
  const std::map<std::string, std::size_t>& where = base.where;
  std::map<std::string, MergeTarget> targets;
  for (const PeftOftModule& m : adapter.modules) {
    const std::string exact = m.name + ".weight";
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
      for (std::size_t dot = m.name.find('.'); candidates.empty() && dot != std::string::npos;
           dot = m.name.find('.', dot + 1))
        if (where.count(m.name.substr(dot + 1) + ".weight") != 0)
          candidates.push_back(m.name.substr(dot + 1) + ".weight");
    }
    if (candidates.empty() && where.count(m.name + ".qweight") != 0)
      throw std::invalid_argument(oft::detail::message(
          "oft: adapter module '", m.name, "' is stored as GPTQ/AWQ int4 ('", m.name,
          ".qweight'): requantizing a merge needs GPTQ/AWQ's calibration-based quantizer, which "
          "oft does not "
          "have; merge into the float model, or keep the adapter unmerged (QoftLinear runs on the "
          "int4 base)"));
    if (candidates.empty())
      throw std::invalid_argument(oft::detail::message(
          "oft: the base has no tensor for adapter module '", m.name, "' (looked for '", exact,
          "' and '*.", exact, "'): an adapter for another model?"));
    if (candidates.size() > 1)
      throw std::invalid_argument(oft::detail::message(
          "oft: adapter module '", m.name, "' matches ", candidates.size(), " base tensors ('",
          candidates[0], "', '", candidates[1], "', ...): ambiguous"));
    const std::string& name = candidates.front();
    if (targets.count(name) != 0)
      throw std::invalid_argument(
          oft::detail::message("oft: adapter modules '", targets.at(name).module->name, "' and '",
                               m.name, "' both target base tensor '", name, "'"));
    MergeTarget t;
    t.module = &m;
    t.file = where.at(name);
    t.view = base.files[t.file].tensor(name);
    t.quantized =
        stored_by_bitsandbytes(base, name.substr(0, name.size() - std::string(".weight").size()));
    if (t.quantized) {  // its shape comes from the quant_state (checked when it is read)
      targets.emplace(name, std::move(t));
      continue;
    }
    const std::string at = oft::detail::message("base tensor '", name, "' (", t.view.file, ")");
    if (t.view.shape.size() == 4)
      throw std::invalid_argument(oft::detail::message(
          "oft: ", at,
          " is 4-D, a Conv2d weight: oft does not merge Conv2d OFT adapters (PEFT's own Conv2d "
          "path is inconsistent; see docs/io.md)"));
    if (t.view.shape.size() != 2)
      throw std::invalid_argument(oft::detail::message("oft: ", at, " has ", t.view.shape.size(),
                                                       " dimensions; module '", m.name,
                                                       "' needs a 2-D weight"));
    const Dtype d = t.view.dtype;
    if (d != Dtype::F32 && d != Dtype::F16 && d != Dtype::BF16)
      throw std::invalid_argument(
          oft::detail::message("oft: ", at, " is ", dtype_name(t.view.dtype),
                               "; merging needs F32, F16 or BF16, or a quantized layer stored by "
                               "bitsandbytes (no quant_state or SCB "
                               "found beside it)"));
    (void)PeftOftAdapter::spec_for(m, static_cast<Index>(t.view.shape[0]),
                                   static_cast<Index>(t.view.shape[1]));
    targets.emplace(name, std::move(t));
  }
  return targets;
}

}  // namespace oft::io
