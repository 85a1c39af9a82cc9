#pragma once
/// \file io/onetrainer_adapter.hpp
/// OneTrainer "OFT v2" adapters in and out: one `.safetensors` file as OneTrainer saves its
/// OFTModule state (github Nerogar/OneTrainer, `modules/module/oft_utils.py` OFTRotationModule,
/// `modules/module/LoRAModule.py` OFTModule; master 23df383, preview ad977de), read as the
/// ComfyUI-OFTv2 loader reads it (github Koratahiu/ComfyUI-OFTv2 `node/oftv2_loader.py` @
/// 29bdbae, OFTv2Adapter.load), into the math of <oft/onetrainer.hpp>:
///
///   auto adapter = oft::io::OneTrainerAdapter::load("my_oft.safetensors");
///   const auto& m = adapter.module("lora_unet_conv_in");
///   oft::RowMatrix<double> merged =
///       oft::io::OneTrainerAdapter::merge(m, w_flat, oft::onetrainer::Layer::Conv2d);
///
/// Keys, per adapted module (`<name>` is whatever OneTrainer's output format made of the module
/// path, e.g. kohya's `lora_unet_down_blocks_0_attentions_0_proj_in`; the loader matches it to
/// the model, this reader keeps it):
///   `<name>.oft_R.weight`       [r, b(b-1)/2]  packed generators (r = 1: one block shared)
///   `<name>.oft_R.scaled_oft`   []  BOOL       present: theta / (2 sqrt(b - 1))
///   `<name>.oft_R.clipped_oft`  []  float      present: clip ||Q||_2 to this radius
///   `<name>.oft_R.cans_oft`     []  BOOL       present: R by Newton-Schulz instead of Neumann
/// The flags are per-module buffers of the state dict (not safetensors metadata); the loader
/// tests only their presence, so a flag stored as false is refused here (it would be on there).
///
/// Refused, naming the tensor: ComfyUI-OFTv2's DoRA variants (`<name>.dora_scale`,
/// `<name>.initial_norm`, `<name>.dora_log_multiplier`: not read by oft), any other tensor, a
/// flag without its `oft_R.weight`, an `oft_R.weight` that is not [r, m] with m = b(b-1)/2
/// (b >= 2), non-finite generators, a clip radius that is not one finite positive number.
/// Errors: format_error (a std::invalid_argument) naming the file, the tensor and the values.
///
/// A PEFT OFT adapter's `base_model.model.<m>.oft_R.weight` has the same key and layout, and the
/// loader takes it; but a PEFT adapter trained with use_cayley_neumann=False (PEFT's exact
/// branch, which computes R(Q)^T) then loads as roughly the INVERSE rotation, and any PEFT
/// adapter with another term count loads with 5. inspect_onetrainer() flags such names.

// clang-format off
#include "../detail/intrinsics.hpp"  // before Eigen (GCC 12)
#include <Eigen/Eigenvalues>
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../onetrainer.hpp"
#include "detail/adapter_files.hpp"
#include "peft_adapter.hpp"
#include "safetensors_reader.hpp"
#include "safetensors_writer.hpp"

namespace oft::io {

/// One OneTrainer OFT module as saved (generators widened to double: F32, F16, BF16 exactly).
struct OneTrainerModule {
  std::string name;           ///< the key without `.oft_R.weight`
  Index rows = 0;             ///< r, the stored blocks (1: shared by every input block)
  Index block_size = 0;       ///< b
  std::vector<double> theta;  ///< rows x b(b-1)/2, row-major
  onetrainer::Flags flags;
  Dtype dtype = Dtype::F32;  ///< oft_R.weight's dtype in the file (save() writes it back as F32)

  /// R of every stored block; `starts` (rows * b values) repeats one load's power iteration,
  /// nullptr clips by the exact spectral norm.
  std::vector<SquareMatrix<double>> rotations(const double* starts = nullptr) const {
    return onetrainer::rotations(theta.data(), rows, block_size, flags, starts);
  }
};

class OneTrainerAdapter {
 public:
  std::vector<OneTrainerModule> modules;        ///< in key order
  std::map<std::string, std::string> metadata;  ///< the file's __metadata__, written back by save()

  static constexpr const char* kWeightSuffix = ".oft_R.weight";
  static constexpr const char* kScaledSuffix = ".oft_R.scaled_oft";
  static constexpr const char* kClippedSuffix = ".oft_R.clipped_oft";
  static constexpr const char* kCansSuffix = ".oft_R.cans_oft";
  static constexpr const char* kPeftPrefix = "base_model.model.";

  /// Whether `file` looks like OneTrainer's: an `oft_R.weight` not under PEFT's
  /// `base_model.model.`, or any of the three flags.
  static bool is_onetrainer(const SafetensorsFile& file) { return !signature_key(file).empty(); }

  /// The first key that makes the file OneTrainer's ("" when none), for detection messages.
  static std::string signature_key(const SafetensorsFile& file) {
    for (const TensorInfo& info : file.tensors()) {
      const std::string& k = info.name;
      if (detail::ends_with(k, kScaledSuffix) || detail::ends_with(k, kClippedSuffix) ||
          detail::ends_with(k, kCansSuffix) ||
          (detail::ends_with(k, kWeightSuffix) && k.rfind(kPeftPrefix, 0) != 0))
        return k;
    }
    return {};
  }

  static OneTrainerAdapter load(const std::filesystem::path& path) {
    return read(SafetensorsFile::open(path));
  }

  /// Reads and validates an open file (see the file comment for what is refused).
  static OneTrainerAdapter read(const SafetensorsFile& file) {
    const std::string where = file.path().string();
    OneTrainerAdapter adapter;
    adapter.metadata = file.metadata();
    std::map<std::string, bool> used;
    for (const std::string& key : file.tensor_names()) {
      if (!detail::ends_with(key, kWeightSuffix)) continue;
      const std::string name = key.substr(0, key.size() - std::string(kWeightSuffix).size());
      adapter.modules.push_back(read_module(file, name));
      for (const char* suffix : {kWeightSuffix, kScaledSuffix, kClippedSuffix, kCansSuffix})
        used[name + suffix] = true;
    }
    if (adapter.modules.empty())
      detail::fail(where, "no OneTrainer OFT module (a tensor <module>", kWeightSuffix,
                   " of shape [r, b(b-1)/2]); the file holds ", listing(file));
    for (const std::string& key : file.tensor_names()) {
      if (used.count(key)) continue;
      const std::string shape = detail::dims(file.tensor(key).shape);
      for (const char* dora : {".dora_scale", ".initial_norm", ".dora_log_multiplier"})
        if (detail::ends_with(key, dora))
          detail::fail(where, "tensor ", detail::quote_name(key), " ", shape,
                       " is ComfyUI-OFTv2's DoRA-OFT magnitude, which oft does not read; "
                       "refusing rather than merging the rotation without it");
      for (const char* flag : {kScaledSuffix, kClippedSuffix, kCansSuffix})
        if (detail::ends_with(key, flag))
          detail::fail(where, "flag ", detail::quote_name(key), " has no ",
                       detail::quote_name(key.substr(0, key.size() - std::string(flag).size()) +
                                          kWeightSuffix));
      detail::fail(where, "tensor ", detail::quote_name(key), " ", shape,
                   " belongs to no OneTrainer OFT module (each is <module>.oft_R.weight and the "
                   "optional flags oft_R.scaled_oft, oft_R.clipped_oft, oft_R.cans_oft)");
    }
    return adapter;
  }

  /// The module called `name` (throws std::out_of_range naming it).
  const OneTrainerModule& module(const std::string& name) const {
    for (const OneTrainerModule& m : modules)
      if (m.name == name) return m;
    throw std::out_of_range(
        oft::detail::message("oft: the OneTrainer adapter has no module '", name, "'"));
  }

  /// What ComfyUI-OFTv2's calculate_weight adds at `strength`, computed in double: the base
  /// weight `weight` ([out, in], a kernel flattened to [out, c*kh*kw]) merged per input block
  /// (<oft/onetrainer.hpp>). `starts`: see OneTrainerModule::rotations. Throws
  /// std::invalid_argument naming the module and both shapes when the columns do not fit.
  static RowMatrix<double> merge(const OneTrainerModule& m, ConstMatrixView<double> weight,
                                 onetrainer::Layer layer, double strength = 1.0,
                                 const double* starts = nullptr) {
    const Index in = weight.cols();
    const bool fits = m.rows == 1 ? in % m.block_size == 0 : in == m.rows * m.block_size;
    oft::detail::require(fits && in > 0, "OneTrainer module '", m.name, "': base weight is ",
                         weight.rows(), "x", in, " (input dims flattened), but oft_R.weight [",
                         m.rows, ", ", m.block_size * (m.block_size - 1) / 2, "] holds ", m.rows,
                         " block(s) of b=", m.block_size,
                         m.rows == 1 ? " (shared: the input must be a multiple of b)" : "",
                         "; another model's adapter?");
    return onetrainer::merge(weight, m.rotations(starts), layer, strength);
  }

  /// Writes the adapter with OneTrainer's keys (F32 oft_R.weight, BOOL scaled_oft and cans_oft,
  /// F32 clipped_oft), atomically. Every module is checked first: a malformed one throws
  /// std::invalid_argument and nothing is written.
  void save(const std::filesystem::path& path) const {
    for (const OneTrainerModule& m : modules) check_module(m);
    SafetensorsWriter writer;
    std::vector<std::vector<float>> keep;  // the writer copies at write time
    keep.reserve(modules.size() * 2);
    const std::uint8_t on = 1;
    for (const OneTrainerModule& m : modules) {
      keep.emplace_back(m.theta.begin(), m.theta.end());
      const auto packed = static_cast<std::uint64_t>(m.block_size * (m.block_size - 1) / 2);
      writer.add(m.name + kWeightSuffix, {static_cast<std::uint64_t>(m.rows), packed}, keep.back());
      if (m.flags.scaled) writer.add(m.name + kScaledSuffix, Dtype::BOOL, {}, &on, 1);
      if (m.flags.clipped) {
        keep.push_back({static_cast<float>(m.flags.clip)});
        writer.add(m.name + kClippedSuffix, std::vector<std::uint64_t>{}, keep.back());
      }
      if (m.flags.cans) writer.add(m.name + kCansSuffix, Dtype::BOOL, {}, &on, 1);
    }
    for (const auto& [key, value] : metadata) writer.add_metadata(key, value);
    writer.write(path);
  }

 private:
  static std::string listing(const SafetensorsFile& file) {
    const std::vector<std::string> names = file.tensor_names();
    if (names.empty()) return "no tensor";
    std::ostringstream out;
    for (std::size_t i = 0; i < names.size() && i < 6; ++i)
      out << (i ? ", " : "") << detail::quote_name(names[i]);
    if (names.size() > 6) out << ", ... (" << names.size() << " tensors)";
    return out.str();
  }

  static void check_module(const OneTrainerModule& m) {
    const Index packed = m.block_size * (m.block_size - 1) / 2;
    oft::detail::require(m.rows >= 1 && m.block_size >= 2 && m.block_size <= kMaxBlockSize &&
                             m.theta.size() == static_cast<std::size_t>(m.rows * packed),
                         "OneTrainer module '", m.name, "': ", m.theta.size(),
                         " generator values for r=", m.rows, " blocks of b=", m.block_size,
                         " (expected r * b(b-1)/2)");
    for (const double v : m.theta)
      oft::detail::require(std::isfinite(v), "OneTrainer module '", m.name, "': generator value ",
                           v, " is not finite");
    if (m.flags.clipped)
      oft::detail::require(std::isfinite(m.flags.clip) && m.flags.clip > 0, "OneTrainer module '",
                           m.name, "': clip radius ", m.flags.clip,
                           " is not a finite positive number");
  }

  /// A scalar flag's one value as double (BOOL, or a float dtype); format_error otherwise.
  static double scalar(const SafetensorsFile& file, const std::string& key) {
    const std::string where = file.path().string();
    const TensorView t = file.tensor(key);
    if (t.numel() != 1 || t.shape.size() > 1)
      detail::fail(where, "flag ", detail::quote_name(key), " is ", detail::dims(t.shape),
                   ", expected one value (shape [])");
    if (t.dtype == Dtype::BOOL) return static_cast<double>(std::to_integer<int>(t.data[0]));
    if (t.dtype == Dtype::F64) return t.copy_as<double>()[0];
    if (t.dtype == Dtype::F32 || t.dtype == Dtype::F16 || t.dtype == Dtype::BF16)
      return static_cast<double>(t.to_floats()[0]);
    detail::fail(where, "flag ", detail::quote_name(key), " is ", dtype_name(t.dtype),
                 ", expected BOOL or a float dtype");
  }

  static OneTrainerModule read_module(const SafetensorsFile& file, const std::string& name) {
    const std::string where = file.path().string();
    const std::string key = name + kWeightSuffix;
    const TensorView t = file.tensor(key);
    const Index b =
        t.shape.size() == 2 ? block_size_or_negative(static_cast<Index>(t.shape[1])) : -1;
    if (t.shape.size() != 2 || t.shape[0] < 1 || b < 2 || b > kMaxBlockSize)
      detail::fail(where, "tensor ", detail::quote_name(key), " is ", detail::dims(t.shape),
                   ", expected [r, b(b-1)/2] (r >= 1 rows of a triangular count, 2 <= b <= ",
                   kMaxBlockSize, ")");
    OneTrainerModule m;
    m.name = name;
    m.rows = static_cast<Index>(t.shape[0]);
    m.block_size = b;
    m.dtype = t.dtype;
    if (t.dtype == Dtype::F64) {
      m.theta = t.copy_as<double>();
    } else if (t.dtype == Dtype::F32 || t.dtype == Dtype::F16 || t.dtype == Dtype::BF16) {
      const std::vector<float> values = t.to_floats();
      m.theta.assign(values.begin(), values.end());
    } else {
      detail::fail(where, "tensor ", detail::quote_name(key), " is ", dtype_name(t.dtype),
                   ", expected a float dtype (F32, F16, BF16 or F64)");
    }
    for (std::size_t i = 0; i < m.theta.size(); ++i)
      if (!std::isfinite(m.theta[i]))
        detail::fail(where, "tensor ", detail::quote_name(key), " has the non-finite value ",
                     m.theta[i], " at row ", static_cast<Index>(i) / (b * (b - 1) / 2));
    for (const char* suffix : {kScaledSuffix, kCansSuffix}) {
      if (!file.contains(name + suffix)) continue;
      const double value = scalar(file, name + suffix);
      if (value != 1.0)
        detail::fail(where, "flag ", detail::quote_name(name + suffix), " is ", value,
                     "; ComfyUI-OFTv2 turns the flag on by its presence alone, so a stored false "
                     "is ambiguous");
      (suffix == kScaledSuffix ? m.flags.scaled : m.flags.cans) = true;
    }
    if (file.contains(name + kClippedSuffix)) {
      m.flags.clipped = true;
      m.flags.clip = scalar(file, name + kClippedSuffix);
      if (!std::isfinite(m.flags.clip) || m.flags.clip <= 0)
        detail::fail(where, "flag ", detail::quote_name(name + kClippedSuffix), " is ",
                     m.flags.clip, ", expected a finite positive clip radius");
    }
    return m;
  }
};

/// What `oft inspect` reports on one OneTrainer module (numbers in double, R with the exact
/// spectral norm for a clipped module).
struct OneTrainerModuleReport {
  std::string name;
  Index rows = 0, block_size = 0;
  bool shared = false, scaled = false, clipped = false, cans = false;
  double clip = 0.0;
  double rho = 0.0;          ///< max over blocks of ||Q_i||_2 after scaling, before the clip
  Index clipped_blocks = 0;  ///< blocks whose ||Q_i||_2 exceeds the radius
  double orthogonality_error = 0.0;  ///< max ||R^T R - I||_2 of the loaded R
  std::string note;                  ///< convention traps found
  /// With the config of a PEFT adapter read this way: max over blocks of ||R_loader - R_PEFT||_F,
  /// the loader's R against the one PEFT trained; -1 when not measured.
  double peft_change = -1.0;
};

/// The report on every module. `peft`: the config of a PEFT OFT adapter read as OneTrainer's
/// (`oft inspect --dialect onetrainer` on a PEFT directory), to name and measure what the
/// loader's 5-term series changes: PEFT's exact branch computes R(Q)^T (the loader then applies
/// about the inverse); another term count, or PEFT's pre-0.18 series, another R.
inline std::vector<OneTrainerModuleReport> inspect_onetrainer(const OneTrainerAdapter& adapter,
                                                              const PeftOftConfig* peft = nullptr) {
  std::vector<OneTrainerModuleReport> out;
  for (const OneTrainerModule& m : adapter.modules) {
    OneTrainerModuleReport r;
    r.name = m.name;
    r.rows = m.rows;
    r.block_size = m.block_size;
    r.shared = m.rows == 1;
    r.scaled = m.flags.scaled;
    r.clipped = m.flags.clipped;
    r.cans = m.flags.cans;
    r.clip = m.flags.clip;
    const Index packed = m.block_size * (m.block_size - 1) / 2;
    const double scale =
        m.flags.scaled ? 2.0 * std::sqrt(static_cast<double>(m.block_size - 1)) : 1.0;
    for (Index i = 0; i < m.rows; ++i) {
      const double rho = oft::detail::skew_spectral_norm(
                             onetrainer::skew_block(m.theta.data() + i * packed, m.block_size)) /
                         scale;
      r.rho = std::max(r.rho, rho);
      if (m.flags.clipped && rho > m.flags.clip) ++r.clipped_blocks;
    }
    for (const SquareMatrix<double>& rot : m.rotations()) {
      const SquareMatrix<double> gram =
          rot.transpose() * rot - SquareMatrix<double>::Identity(rot.rows(), rot.cols());
      const Eigen::SelfAdjointEigenSolver<SquareMatrix<double>> eig(gram, Eigen::EigenvaluesOnly);
      r.orthogonality_error =
          std::max(r.orthogonality_error, eig.eigenvalues().cwiseAbs().maxCoeff());
    }
    if (peft != nullptr && !m.flags.scaled && !m.flags.clipped && !m.flags.cans) {
      // PEFT's own R per block by its policy (on negated theta for the exact branch, as
      // PeftOftAdapter holds it), against the loader's.
      const auto spec = BlockSpec::from_features(m.rows * m.block_size, m.block_size);
      Generators<double> theta(spec);
      const double sign = peft->use_cayley_neumann ? 1.0 : -1.0;
      for (Index i = 0; i < m.rows; ++i)
        for (Index j = 0; j < packed; ++j)
          theta.row(i)[j] = sign * m.theta[static_cast<std::size_t>(i * packed + j)];
      AnyBlockOrthogonal<double> trained(spec, peft->policy());
      trained.set_generators(theta.view());
      const std::vector<SquareMatrix<double>> loaded = m.rotations();
      r.peft_change = 0.0;
      for (Index i = 0; i < m.rows; ++i)
        r.peft_change = std::max(r.peft_change,
                                 (loaded[static_cast<std::size_t>(i)] - trained.block(i)).norm());
      r.note = !peft->use_cayley_neumann
                   ? "PEFT's exact branch trained R(Q)^T: the loader's 5-term series applies "
                     "about its inverse"
                   : "PEFT's Neumann branch, " + std::to_string(peft->num_cayley_neumann_terms) +
                         " terms: the loader uses 5";
    } else if (m.name.rfind(OneTrainerAdapter::kPeftPrefix, 0) == 0) {
      r.note =
          "a PEFT module name: ComfyUI-OFTv2 loads it with 5 Neumann terms (a PEFT exact-branch "
          "adapter, use_cayley_neumann=False, then loads as its inverse rotation)";
    } else if (!m.flags.cans && (m.flags.clipped ? std::min(r.rho, m.flags.clip) : r.rho) >= 1.0) {
      r.note = "rho >= 1: the 5-term Neumann series is far from a rotation";
    }
    out.push_back(std::move(r));
  }
  return out;
}

inline nlohmann::ordered_json to_json(const std::vector<OneTrainerModuleReport>& report) {
  nlohmann::ordered_json modules = nlohmann::ordered_json::array();
  for (const OneTrainerModuleReport& r : report)
    modules.push_back({{"name", r.name},
                       {"rows", r.rows},
                       {"block_size", r.block_size},
                       {"shared", r.shared},
                       {"scaled_oft", r.scaled},
                       {"clipped_oft", r.clipped ? nlohmann::ordered_json(r.clip)
                                                 : nlohmann::ordered_json(nullptr)},
                       {"cans_oft", r.cans},
                       {"rho", r.rho},
                       {"peft_change", r.peft_change < 0 ? nlohmann::ordered_json(nullptr)
                                                         : nlohmann::ordered_json(r.peft_change)},
                       {"clipped_blocks", r.clipped_blocks},
                       {"orthogonality_error", r.orthogonality_error},
                       {"note", r.note}});
  return {{"dialect", "onetrainer-oft"}, {"side", "input"}, {"modules", modules}};
}

}  // namespace oft::io
