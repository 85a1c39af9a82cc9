#pragma once
// `oft convert`: rewrites a PEFT OFT adapter in another form that PEFT loads, refusing any change
// of the model it was not explicitly allowed to make, and measuring the change when it was.
//
//   --expand-block-share --base MODEL   block_share=true -> one generator per block, copied:
//                                       the same rotation, exactly (refused with COFT, whose
//                                       radius eps/sqrt(rows) would change with the row count)
//   --generators-dtype f32|bf16|f16     the generators' dtype in the file; rounding to 16 bits
//                                       changes R: refused unless --allow-change
//   --to-current-polynomial             an adapter saved before PEFT 0.18 (legacy Neumann
//                                       polynomial) relabelled for PEFT >= 0.18, whose polynomial
//                                       differs: refused unless --allow-change
//
// The report gives, per module, the largest entry change of any block of R (0 when exact).

#include "merge.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace oft_cli {

struct ConvertOptions {
  fs::path adapter;
  fs::path out;
  fs::path base;                 ///< needed by expand_block_share (the widths live in the base)
  bool expand_block_share = false;
  std::string generators_dtype;  ///< "" (keep F32), f32, bf16, f16
  bool to_current_polynomial = false;
  bool allow_change = false;
  bool force = false;
};

struct ConvertReport {
  struct Module {
    std::string name;
    double max_change = 0.0;  ///< max over blocks and entries of |R_new - R_old|
  };
  std::vector<Module> modules;
  double max_change = 0.0;
};

namespace convert_detail {

/// Every block of module m's R under `adapter`'s policy, over `features` input features.
inline std::vector<oft::RowMatrix<float>> rotation_blocks(const oft::io::PeftOftAdapter& adapter,
                                                          const oft::io::PeftOftModule& m, oft::Index features) {
  const oft::AnyBlockOrthogonal<float> rotation = adapter.rotation_for(m, 1, features);
  std::vector<oft::RowMatrix<float>> blocks;
  for (oft::Index i = 0; i < rotation.spec().blocks; ++i) blocks.push_back(rotation.block(i));
  return blocks;
}

inline double max_difference(const std::vector<oft::RowMatrix<float>>& a, const std::vector<oft::RowMatrix<float>>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, static_cast<double>((a[i] - b[i]).cwiseAbs().maxCoeff()));
  return worst;
}

inline float round_to(float v, oft::io::Dtype dtype) {
  if (dtype == oft::io::Dtype::BF16) return oft::io::bf16_to_float(oft::io::float_to_bf16(v));
  if (dtype == oft::io::Dtype::F16) return oft::io::f16_to_float(oft::io::float_to_f16(v));
  return v;
}

}  // namespace convert_detail

/// Runs `oft convert` (see the file comment). Nothing is written when it throws.
inline ConvertReport convert_adapter(const ConvertOptions& options) {
  using namespace convert_detail;
  using oft::io::Dtype;
  if (!options.expand_block_share && options.generators_dtype.empty() && !options.to_current_polynomial)
    throw std::invalid_argument(
        "oft: convert: nothing to do (pass --expand-block-share, --generators-dtype or --to-current-polynomial)");
  const fs::path out = fs::absolute(options.out);
  if (fs::exists(out) && !options.force)
    throw std::invalid_argument("oft: output '" + options.out.string() + "' exists (pass --force to replace it)");
  const oft::io::PeftOftAdapter before = oft::io::PeftOftAdapter::load(options.adapter);
  oft::io::PeftOftAdapter after = before;

  // The width each module rotates: from the base with block_share, else from the adapter itself.
  std::map<std::string, oft::Index> features;
  if (options.expand_block_share) {
    if (!before.config.block_share)
      throw std::invalid_argument("oft: convert --expand-block-share: the adapter does not use block_share");
    if (before.config.coft)
      throw std::invalid_argument(
          "oft: convert --expand-block-share: the adapter uses COFT, whose radius eps/sqrt(rows) depends on the "
          "number of generator rows: expanding would change the model");
    if (options.base.empty())
      throw std::invalid_argument("oft: convert --expand-block-share needs --base MODEL (the layer widths are in the base)");
    const merge_detail::BaseModel base = merge_detail::BaseModel::open(options.base);
    for (const auto& [name, target] : merge_detail::plan_targets(base, before))
      features[target.module->name] = static_cast<oft::Index>(target.view.shape[1]);
  } else if (before.config.block_share) {
    // Without a base, one block per module is enough to measure a change of R.
    for (const auto& m : before.modules) features[m.name] = m.spec.block_size;
  } else {
    for (const auto& m : before.modules) features[m.name] = m.spec.features();
  }

  if (options.expand_block_share) {
    for (auto& m : after.modules) {
      const oft::Index rows = features.at(m.name) / m.spec.block_size;
      oft::Generators<float> theta(rows, m.spec.block_size);
      for (oft::Index g = 0; g < rows; ++g) theta.values().row(g) = m.theta.values().row(0);
      m.theta = std::move(theta);
      m.spec = oft::BlockSpec{rows, m.spec.block_size, false};
    }
    after.config.block_share = false;
    after.config.raw["block_share"] = false;
  }
  Dtype dtype = Dtype::F32;
  if (!options.generators_dtype.empty()) {
    if (options.generators_dtype == "bf16") dtype = Dtype::BF16;
    else if (options.generators_dtype == "f16") dtype = Dtype::F16;
    else if (options.generators_dtype != "f32")
      throw std::invalid_argument("oft: --generators-dtype " + options.generators_dtype + ": expected f32, bf16 or f16");
    for (auto& m : after.modules)
      for (oft::Index e = 0; e < m.theta.values().size(); ++e)
        m.theta.values().data()[e] = round_to(m.theta.values().data()[e], dtype);
  }
  if (options.to_current_polynomial) {
    if (!before.config.use_cayley_neumann || before.config.neumann_form() != oft::peft::NeumannForm::Legacy)
      throw std::invalid_argument("oft: convert --to-current-polynomial: the adapter does not use PEFT's legacy "
                                  "(pre-0.18) Neumann polynomial");
    after.config.peft_version = "0.18.0";
    after.config.raw["peft_version"] = "0.18.0";
  }

  // Measure what changed: every block of R, old against new.
  ConvertReport report;
  for (std::size_t i = 0; i < before.modules.size(); ++i) {
    const auto& m_old = before.modules[i];
    const auto& m_new = after.modules[i];
    const oft::Index width = features.at(m_old.name);
    const double change = max_difference(rotation_blocks(before, m_old, width), rotation_blocks(after, m_new, width));
    report.modules.push_back({m_old.name, change});
    report.max_change = std::max(report.max_change, change);
  }
  if (report.max_change > 0.0 && !options.allow_change) {
    const auto worst = std::max_element(report.modules.begin(), report.modules.end(),
                                        [](const auto& a, const auto& b) { return a.max_change < b.max_change; });
    throw std::invalid_argument(oft::detail::message(
        "oft: convert: the conversion changes the rotation (module '", worst->name, "': an entry of R moves by ",
        worst->max_change, "); pass --allow-change to write it anyway"));
  }

  // Write next to the destination, rename when complete.
  const fs::path staging = merge_detail::staging_directory(out);
  fs::remove_all(staging);
  merge_detail::RemoveOnFailure cleanup(staging);
  after.save(staging, dtype);
  for (const auto& entry : fs::directory_iterator(options.adapter)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name != "adapter_config.json" && name != "adapter_model.safetensors")
      fs::copy_file(entry.path(), staging / name);  // README.md and the like
  }
  merge_detail::commit_directory(staging, out);
  cleanup.release();
  return report;
}

}  // namespace oft_cli
