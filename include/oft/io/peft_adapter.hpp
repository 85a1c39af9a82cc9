#pragma once
/// \file io/peft_adapter.hpp
/// Hugging Face PEFT OFT adapters in and out: `adapter_config.json` + `adapter_model.safetensors`
/// (SPEC sections 4 and 9), read into oft's generators and the policy that reproduces PEFT:
///
///   auto adapter = oft::io::PeftOftAdapter::load("my_adapter/");
///   for (const auto& m : adapter.modules)                     // "fc1", "model.layers.0.q_proj"...
///     RowMatrix<float> merged = adapter.merge(m, w0_view);    // what PEFT's merge_and_unload gives
///
/// Conventions that a loader must get right, each handled here:
///   - b comes from each tensor's row length (PEFT changes oft_block_size per layer when it does
///     not divide in_features); r from its rows, or r = 1 with block_share;
///   - use_cayley_neumann=True with num_cayley_neumann_terms T -> peft::NeumannBranch{T, form},
///     form Legacy when `peft_version` is absent or older than 0.18 (the field appeared in 0.18,
///     with the new polynomial);
///   - use_cayley_neumann=False: PEFT's exact branch is R(-Q), so theta is held NEGATED here,
///     with ExactCayley (save() negates it back);
///   - coft=True: PEFT projects theta onto its float32 ball before every use, merge included;
///     merge() does the same (peft::coft_project with peft::coft_radius);
///   - Linear `<m>.oft_R.weight` merges as W' = W0 R^T; Embedding `<m>.oft_embedding_R.weight`
///     as E' = E R (PEFT rotates the embedding's output side).
/// Conv2d adapters share Linear's tensor name and cannot be told apart without the base: merge()
/// refuses a base weight that is not a matrix of d = r*b columns (a conv kernel is [out, in, k, k]).
///
/// Errors: format_error naming the file, the key and the values (a missing or malformed field, a
/// tensor that is not [rows, b(b-1)/2], a peft_type other than OFT, an unknown tensor).

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../any_operator.hpp"
#include "../coft.hpp"
#include "../peft.hpp"
#include "../peft_polynomial.hpp"
#include "detail/adapter_files.hpp"
#include "safetensors_reader.hpp"
#include "safetensors_writer.hpp"

namespace oft::io {

/// Which PEFT layer an adapted module is.
enum class PeftModuleKind {
  Linear,     ///< `<module>.oft_R.weight`: W' = W0 R^T
  Embedding,  ///< `<module>.oft_embedding_R.weight`: E' = E R
};

/// The fields of adapter_config.json that decide the math.
struct PeftOftConfig {
  std::string peft_version;  ///< empty when absent (saved by PEFT < 0.18)
  bool use_cayley_neumann = true;
  int num_cayley_neumann_terms = 5;
  bool block_share = false;
  bool coft = false;
  double eps = 6e-5;
  Index oft_block_size = 0;
  Index r = 0;
  double module_dropout = 0.0;
  std::vector<std::string> target_modules;
  nlohmann::ordered_json raw;  ///< the whole file, written back by save()

  /// PEFT's polynomial form for this adapter: Legacy before 0.18 (or without peft_version).
  peft::NeumannForm neumann_form() const {
    int major = 0, minor = 0;
    if (peft_version.empty() || std::sscanf(peft_version.c_str(), "%d.%d", &major, &minor) != 2)
      return peft::NeumannForm::Legacy;
    return peft::neumann_form_for_version(major, minor);
  }
  /// The policy that reproduces PEFT (for the exact branch: on negated theta, as held here).
  AnyPolicy policy() const {
    if (!use_cayley_neumann) return ExactCayley{};
    return peft::NeumannBranch{num_cayley_neumann_terms, neumann_form()};
  }
};

/// One adapted module, in oft's convention.
struct PeftOftModule {
  std::string name;     ///< module path without PEFT's "base_model.model." prefix
  PeftModuleKind kind = PeftModuleKind::Linear;
  BlockSpec spec;       ///< r blocks of b (r = features / b; shared with block_share)
  Generators<float> theta;  ///< [rows, b(b-1)/2]; negated for the exact branch
};

class PeftOftAdapter {
 public:
  PeftOftConfig config;
  std::vector<PeftOftModule> modules;

  /// Reads `directory`/adapter_config.json and `directory`/adapter_model.safetensors.
  static PeftOftAdapter load(const std::filesystem::path& directory) {
    PeftOftAdapter adapter;
    adapter.config = read_config(directory / "adapter_config.json");
    const SafetensorsFile file = SafetensorsFile::open(directory / "adapter_model.safetensors");
    for (const std::string& key : file.tensor_names())
      adapter.modules.push_back(read_module(file, key, adapter.config));
    return adapter;
  }

  /// The module called `name` (throws std::out_of_range naming it).
  const PeftOftModule& module(const std::string& name) const {
    for (const PeftOftModule& m : modules)
      if (m.name == name) return m;
    throw std::out_of_range(oft::detail::message("oft: the adapter has no module '", name, "'"));
  }

  /// Generators as PEFT uses them at merge time: COFT-projected with PEFT's float32 radius
  /// when coft is on (the exact branch's negation commutes with the projection).
  Generators<float> effective_generators(const PeftOftModule& m) const {
    Generators<float> theta = m.theta;
    if (config.coft) peft::coft_project(theta.view(), peft::coft_radius(config.eps, theta.count()));
    return theta;
  }

  /// What PEFT's merge gives for module `m` over its frozen weight (row-major, float):
  /// Linear [n_out, d] -> W0 R^T; Embedding [num_embeddings, d] -> E R. Throws
  /// std::invalid_argument when the weight does not have d = r*b columns.
  RowMatrix<float> merge(const PeftOftModule& m, ConstMatrixView<float> weight, double strength = 1.0) const {
    const AnyBlockOrthogonal<float> rotation = rotation_for(m, weight.rows(), weight.cols(), strength);
    RowMatrix<float> out(weight.rows(), weight.cols());
    if (m.kind == PeftModuleKind::Linear)
      rotation.apply_transposed(weight, view(out));  // each row w -> w R^T
    else
      rotation.apply(weight, view(out));             // each row e -> e R
    return out;
  }

  /// The true inverse of merge(m, ., strength): the frozen weight back from a merged one.
  /// Linear W0 = W' (R^T)^-1, Embedding E = E' R^-1 (BlockOrthogonal::apply_inverse: per-block
  /// LU, since a Neumann R is not exactly orthogonal and R^T would not undo it). Throws
  /// std::domain_error naming the block when a block is singular.
  RowMatrix<float> unmerge(const PeftOftModule& m, ConstMatrixView<float> merged, double strength = 1.0) const {
    const AnyBlockOrthogonal<float> rotation = rotation_for(m, merged.rows(), merged.cols(), strength);
    RowMatrix<float> out(merged.rows(), merged.cols());
    rotation.apply_inverse(merged, view(out), /*transposed=*/m.kind == PeftModuleKind::Linear);
    return out;
  }

  /// Module m's R(strength * Q) over a rows x cols base weight, as PEFT uses it (COFT projection
  /// included). Throws std::invalid_argument when the width does not fit (spec_for).
  AnyBlockOrthogonal<float> rotation_for(const PeftOftModule& m, Index rows, Index cols, double strength = 1.0) const {
    Generators<float> theta = effective_generators(m);
    if (strength != 1.0) theta.values() *= static_cast<float>(strength);
    AnyBlockOrthogonal<float> rotation(spec_for(m, rows, cols), config.policy());
    rotation.set_generators(theta);
    return rotation;
  }

  /// The block layout of module `m` over a base weight of `weight.cols()` features: r = rows of
  /// theta, or, with block_share, as many blocks of b as the features hold (PEFT's
  /// in_features / b). Throws std::invalid_argument when the widths disagree.
  static BlockSpec spec_for(const PeftOftModule& m, ConstMatrixView<float> weight) {
    return spec_for(m, weight.rows(), weight.cols());
  }
  /// The same from the weight's shape alone (to check a base before reading any data).
  static BlockSpec spec_for(const PeftOftModule& m, Index rows, Index cols) {
    const Index b = m.spec.block_size;
    const bool fits = m.spec.shared ? (cols > 0 && cols % b == 0) : cols == m.spec.features();
    oft::detail::require(fits, "module '", m.name, "': base weight is ", rows, "x",
                    cols, ", but the adapter rotates ",
                    m.spec.shared ? oft::detail::message("a multiple of b=", b, " features (block_share)")
                                  : oft::detail::message("d=", m.spec.features(), " features (r=",
                                                    m.spec.blocks, " blocks of b=", b, ")"),
                    "; a Conv2d adapter, or another model's?");
    return m.spec.shared ? BlockSpec::from_features(cols, b, true) : m.spec;
  }

  /// Writes adapter_config.json and adapter_model.safetensors that PEFT loads (theta back in
  /// PEFT's convention; metadata {"format": "pt"}). Each file is written atomically.
  /// `generators_dtype` F32 (default), BF16 or F16: the generators are rounded to nearest even
  /// for the 16-bit types (oft convert reports what that changes).
  void save(const std::filesystem::path& directory, Dtype generators_dtype = Dtype::F32) const {
    oft::detail::require(generators_dtype == Dtype::F32 || generators_dtype == Dtype::BF16 ||
                             generators_dtype == Dtype::F16,
                         "PeftOftAdapter::save: generators are written as F32, BF16 or F16, not ",
                         dtype_name(generators_dtype));
    SafetensorsWriter writer;
    std::vector<std::vector<std::uint16_t>> halves;
    std::vector<std::vector<float>> rows_out;
    halves.reserve(modules.size());
    rows_out.reserve(modules.size());
    for (const PeftOftModule& m : modules) {
      rows_out.emplace_back(m.theta.values().data(), m.theta.values().data() + m.theta.values().size());
      if (!config.use_cayley_neumann)
        for (float& v : rows_out.back()) v = -v;
      const std::vector<std::uint64_t> shape{static_cast<std::uint64_t>(m.theta.count()),
                                             static_cast<std::uint64_t>(m.theta.packed())};
      if (generators_dtype == Dtype::F32) {
        writer.add(tensor_key(m), shape, rows_out.back());
        continue;
      }
      halves.emplace_back();
      for (const float v : rows_out.back())
        halves.back().push_back(generators_dtype == Dtype::BF16 ? float_to_bf16(v) : float_to_f16(v));
      writer.add(tensor_key(m), generators_dtype, shape, halves.back().data(), halves.back().size() * 2);
    }
    writer.add_metadata("format", "pt");
    std::filesystem::create_directories(directory);
    writer.write(directory / "adapter_model.safetensors");
    detail::write_text_atomically(directory / "adapter_config.json", config.raw.dump(2) + "\n");
  }

  /// PEFT's tensor name for a module.
  static std::string tensor_key(const PeftOftModule& m) {
    return std::string(kPrefix) + m.name +
           (m.kind == PeftModuleKind::Linear ? kLinearSuffix : kEmbeddingSuffix);
  }

 private:
  static constexpr const char* kPrefix = "base_model.model.";
  static constexpr const char* kLinearSuffix = ".oft_R.weight";
  static constexpr const char* kEmbeddingSuffix = ".oft_embedding_R.weight";

  // nlohmann's get<int>() of 1e30 or 2.5 is a static_cast (undefined for out-of-range values, a
  // silent truncation otherwise), so integer fields take JSON integers in T's range only.
  template <class T>
  static T integer_field(const nlohmann::ordered_json& json, const char* key, const std::string& where,
                         T fallback) {
    if (!json.contains(key) || json.at(key).is_null()) return fallback;
    const auto& value = json.at(key);
    const bool in_range =
        value.is_number_unsigned()
            ? value.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<T>::max())
            : value.is_number_integer() && value.get<std::int64_t>() >= std::numeric_limits<T>::min() &&
                  value.get<std::int64_t>() <= std::numeric_limits<T>::max();
    if (!in_range)
      throw format_error(oft::detail::message("oft: ", where, ": field '", key, "' is ", value.dump(),
                                         ", expected an integer in [", std::numeric_limits<T>::min(),
                                         ", ", std::numeric_limits<T>::max(), "]"));
    return static_cast<T>(value.get<std::int64_t>());
  }

  static PeftOftConfig read_config(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw format_error(oft::detail::message("oft: ", path.string(), ": cannot be read"));
    std::stringstream text;
    text << in.rdbuf();
    PeftOftConfig config;
    const std::string where = path.string();
    try {
      config.raw = nlohmann::ordered_json::parse(text.str());
    } catch (const nlohmann::json::exception& e) {
      throw format_error(oft::detail::message("oft: ", where, ": not JSON (", e.what(), ")"));
    }
    const auto& json = config.raw;
    if (!json.is_object()) throw format_error(oft::detail::message("oft: ", where, ": not a JSON object"));
    const std::string type = detail::config_field<std::string>(json, "peft_type", where, "");
    if (type != "OFT")
      throw format_error(oft::detail::message("oft: ", where, ": peft_type is '", type,
                                         "', expected 'OFT'"));
    config.peft_version = detail::config_field<std::string>(json, "peft_version", where, "");
    config.use_cayley_neumann = detail::config_field<bool>(json, "use_cayley_neumann", where, false);
    config.num_cayley_neumann_terms = integer_field<int>(json, "num_cayley_neumann_terms", where, 5);
    config.block_share = detail::config_field<bool>(json, "block_share", where, false);
    config.coft = detail::config_field<bool>(json, "coft", where, false);
    config.eps = detail::config_field<double>(json, "eps", where, 6e-5);
    config.oft_block_size = integer_field<Index>(json, "oft_block_size", where, 0);
    config.r = integer_field<Index>(json, "r", where, 0);
    config.module_dropout = detail::config_field<double>(json, "module_dropout", where, 0.0);
    if (json.contains("target_modules") && json.at("target_modules").is_string())
      config.target_modules = {json.at("target_modules").get<std::string>()};
    else
      config.target_modules = detail::config_field<std::vector<std::string>>(json, "target_modules", where, {});
    if (config.use_cayley_neumann) (void)peft::NeumannBranch{config.num_cayley_neumann_terms};
    if (config.coft)
      oft::detail::require(config.eps >= 0.0 && std::isfinite(config.eps), where, ": coft eps ",
                      config.eps, " is not finite and >= 0");
    return config;
  }

  static PeftOftModule read_module(const SafetensorsFile& file, const std::string& key,
                                   const PeftOftConfig& config) {
    const std::string where = file.path().string();
    PeftOftModule m;
    std::string stem;
    if (detail::ends_with(key, kLinearSuffix)) {
      m.kind = PeftModuleKind::Linear;
      stem = key.substr(0, key.size() - std::string(kLinearSuffix).size());
    } else if (detail::ends_with(key, kEmbeddingSuffix)) {
      m.kind = PeftModuleKind::Embedding;
      stem = key.substr(0, key.size() - std::string(kEmbeddingSuffix).size());
    } else {
      throw format_error(oft::detail::message("oft: ", where, ": tensor '", key,
                                         "' is no OFT generator (expected <module>", kLinearSuffix,
                                         " or <module>", kEmbeddingSuffix, ")"));
    }
    m.name = stem.rfind(kPrefix, 0) == 0 ? stem.substr(std::string(kPrefix).size()) : stem;
    const TensorView tensor = file.tensor(key);
    if (tensor.shape.size() != 2)
      throw format_error(oft::detail::message("oft: ", where, ": tensor '", key, "' has ",
                                         tensor.shape.size(), " dimensions, expected [rows, b(b-1)/2]"));
    const Index rows = static_cast<Index>(tensor.shape[0]), packed = static_cast<Index>(tensor.shape[1]);
    const Index b = block_size_or_negative(packed);
    if (b < 1 || b > kMaxBlockSize || rows < 1)
      throw format_error(oft::detail::message("oft: ", where, ": tensor '", key, "' is [", rows, ", ",
                                         packed, "]: ", packed,
                                         " is no b(b-1)/2 for a block size b in [1, ", kMaxBlockSize,
                                         "], or there are no rows"));
    if (config.block_share && rows != 1)
      throw format_error(oft::detail::message("oft: ", where, ": tensor '", key, "' has ", rows,
                                         " rows, but block_share needs 1"));
    std::vector<float> values;
    if (tensor.dtype == Dtype::F64) {
      for (const double v : tensor.copy_as<double>()) values.push_back(static_cast<float>(v));
    } else {
      values = tensor.to_floats();
    }
    m.theta = Generators<float>(rows, b);
    std::copy(values.begin(), values.end(), m.theta.values().data());
    if (!config.use_cayley_neumann) peft::flip_exact_branch(m.theta.view());
    // With block_share the one generator serves in_features / b blocks, which only the base
    // knows (spec_for takes it from the base weight); until then the spec holds one block.
    m.spec = BlockSpec{config.block_share ? 1 : rows, b, config.block_share};
    return m;
  }
};

}  // namespace oft::io
