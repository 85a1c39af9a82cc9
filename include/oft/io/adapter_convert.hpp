#pragma once
/// \file io/adapter_convert.hpp
/// convert_adapter(): a PEFT OFT adapter rewritten in another form that PEFT loads, refusing any
/// change of the model it was not explicitly allowed to make, and measuring the change when it
/// was. The function behind `oft convert`.
///
///   expand_block_share (needs base)   block_share=true -> one generator per block, copied: the
///                                     same rotation, exactly (refused with COFT, whose radius
///                                     eps/sqrt(rows) would change with the row count)
///   generators_dtype F32|BF16|F16     the generators' dtype in the file; rounding to 16 bits
///                                     changes R: refused unless allow_change
///   to_current_polynomial             an adapter saved before PEFT 0.18 (legacy Neumann
///                                     polynomial) relabelled for PEFT >= 0.18, whose polynomial
///                                     differs: refused unless allow_change
///
/// The report gives, per module, the largest entry change of any block of R (0 when exact).
/// Messages name the options by the command-line flags of `oft convert`.

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "atomic_directory.hpp"
#include "merge_plan.hpp"
#include "model_directory.hpp"
#include "peft_adapter.hpp"
#include "peft_family_adapter.hpp"

namespace oft::io {

/// The dtype convert_adapter writes the generators in.
enum class GeneratorsDtype {
  Unchanged,  ///< not asked for: written as float32, as loaded
  F32,
  BF16,
  F16,
};

/// What convert_adapter is asked to do (at least one of expand_block_share, generators_dtype,
/// to_current_polynomial).
struct ConvertOptions {
  std::string adapter;  ///< PEFT OFT adapter directory
  std::string out;      ///< output adapter directory, written whole or not at all
  std::string
      base;  ///< model directory, needed by expand_block_share (the widths live in the base)
  bool expand_block_share = false;
  GeneratorsDtype generators_dtype = GeneratorsDtype::Unchanged;
  bool to_current_polynomial = false;
  bool allow_change = false;  ///< write a conversion that changes R
  bool force = false;         ///< replace an existing output directory
};

/// What convert_adapter changed.
struct ConvertReport {
  struct Module {
    std::string name;
    double max_change = 0.0;  ///< max over blocks and entries of |R_new - R_old|
  };
  std::vector<Module> modules;
  double max_change = 0.0;
};

namespace detail {

/// Every block of module m's R under `adapter`'s policy, over `features` input features.
inline std::vector<RowMatrix<float>> rotation_blocks(const PeftOftAdapter& adapter,
                                                     const PeftOftModule& m, Index features) {
  const AnyBlockOrthogonal<float> rotation = adapter.rotation_for(m, 1, features);
  std::vector<RowMatrix<float>> blocks;
  for (Index i = 0; i < rotation.spec().blocks; ++i) blocks.push_back(rotation.block(i));
  return blocks;
}

inline double max_difference(const std::vector<RowMatrix<float>>& a,
                             const std::vector<RowMatrix<float>>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, static_cast<double>((a[i] - b[i]).cwiseAbs().maxCoeff()));
  return worst;
}

inline float round_to(float v, Dtype dtype) {
  if (dtype == Dtype::BF16) return bf16_to_float(float_to_bf16(v));
  if (dtype == Dtype::F16) return f16_to_float(float_to_f16(v));
  return v;
}

}  // namespace detail

/// Runs the conversion (see the file comment) and writes the adapter directory `options.out`
/// (adapter_config.json, adapter_model.safetensors, and the adapter's other files copied).
/// Throws std::invalid_argument (nothing to do, a refused change, bad options),
/// oft::io::format_error or std::system_error; nothing is written when it throws.
inline ConvertReport convert_adapter(const ConvertOptions& options) {
  namespace fs = std::filesystem;
  using namespace detail;
  if (!options.expand_block_share && options.generators_dtype == GeneratorsDtype::Unchanged &&
      !options.to_current_polynomial)
    throw std::invalid_argument(
        "oft: convert: nothing to do (pass --expand-block-share, --generators-dtype or "
        "--to-current-polynomial)");
  const fs::path out = fs::absolute(options.out);
  if (fs::exists(out) && !options.force)
    throw std::invalid_argument("oft: output '" + fs::path(options.out).string() +
                                "' exists (pass --force to replace it)");
  if (const std::string type = peft_type_of(options.adapter); is_peft_family_type(type))
    throw std::invalid_argument(oft::detail::message(
        "oft: convert: ", options.adapter, " is a PEFT ", type,
        " adapter; convert rewrites OFT adapters only (no conversion between families)"));
  const PeftOftAdapter before = PeftOftAdapter::load(options.adapter);
  PeftOftAdapter after = before;

  // The width each module rotates: from the base with block_share, else from the adapter itself.
  std::map<std::string, Index> features;
  if (options.expand_block_share) {
    if (!before.config.block_share)
      throw std::invalid_argument(
          "oft: convert --expand-block-share: the adapter does not use block_share");
    if (before.config.coft)
      throw std::invalid_argument(
          "oft: convert --expand-block-share: the adapter uses COFT, whose radius eps/sqrt(rows) "
          "depends on the "
          "number of generator rows: expanding would change the model");
    if (options.base.empty())
      throw std::invalid_argument(
          "oft: convert --expand-block-share needs --base MODEL (the layer widths are in the "
          "base)");
    const ModelDirectory base = ModelDirectory::open(options.base);
    for (const auto& [name, target] : plan_merge_targets(base, before))
      features[target.module->name] = static_cast<Index>(target.view.shape[1]);
  } else if (before.config.block_share) {
    // Without a base, one block per module is enough to measure a change of R.
    for (const auto& m : before.modules) features[m.name] = m.spec.block_size;
  } else {
    for (const auto& m : before.modules) features[m.name] = m.spec.features();
  }

  if (options.expand_block_share) {
    for (auto& m : after.modules) {
      const Index rows = features.at(m.name) / m.spec.block_size;
      Generators<float> theta(rows, m.spec.block_size);
      for (Index g = 0; g < rows; ++g) theta.values().row(g) = m.theta.values().row(0);
      m.theta = std::move(theta);
      m.spec = BlockSpec{rows, m.spec.block_size, false};
    }
    after.config.block_share = false;
    after.config.raw["block_share"] = false;
  }
  Dtype dtype = Dtype::F32;
  if (options.generators_dtype != GeneratorsDtype::Unchanged) {
    if (options.generators_dtype == GeneratorsDtype::BF16) dtype = Dtype::BF16;
    if (options.generators_dtype == GeneratorsDtype::F16) dtype = Dtype::F16;
    for (auto& m : after.modules)
      for (Index e = 0; e < m.theta.values().size(); ++e)
        m.theta.values().data()[e] = round_to(m.theta.values().data()[e], dtype);
  }
  if (options.to_current_polynomial) {
    if (!before.config.use_cayley_neumann ||
        before.config.neumann_form() != peft::NeumannForm::Legacy)
      throw std::invalid_argument(
          "oft: convert --to-current-polynomial: the adapter does not use PEFT's legacy "
          "(pre-0.18) Neumann polynomial");
    after.config.peft_version = "0.18.0";
    after.config.raw["peft_version"] = "0.18.0";
  }

  // Measure what changed: every block of R, old against new.
  ConvertReport report;
  for (std::size_t i = 0; i < before.modules.size(); ++i) {
    const auto& m_old = before.modules[i];
    const auto& m_new = after.modules[i];
    const Index width = features.at(m_old.name);
    const double change =
        max_difference(rotation_blocks(before, m_old, width), rotation_blocks(after, m_new, width));
    report.modules.push_back({m_old.name, change});
    report.max_change = std::max(report.max_change, change);
  }
  if (report.max_change > 0.0 && !options.allow_change) {
    const auto worst =
        std::max_element(report.modules.begin(), report.modules.end(),
                         [](const auto& a, const auto& b) { return a.max_change < b.max_change; });
    throw std::invalid_argument(
        oft::detail::message("oft: convert: the conversion changes the rotation (module '",
                             worst->name, "': an entry of R moves by ", worst->max_change,
                             "); pass --allow-change to write it anyway"));
  }

  // Write next to the destination, rename when complete.
  const fs::path staging = staging_directory(out);
  fs::remove_all(staging);
  RemoveOnFailure cleanup(staging);
  after.save(staging, dtype);
  for (const auto& entry : fs::directory_iterator(options.adapter)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name != "adapter_config.json" &&
        name != "adapter_model.safetensors")
      fs::copy_file(entry.path(), staging / name);  // README.md and the like
  }
  commit_directory(staging, out);
  cleanup.release();
  return report;
}

}  // namespace oft::io
