#pragma once
/// \file io/lycoris_adapter.hpp
/// LyCORIS diag-OFT adapters in and out: one `.safetensors` file as lycoris-lora's
/// LycorisNetwork.save_weights writes it (lycoris-lora 4.1.3, `lycoris/wrapper.py` and
/// `lycoris/modules/diag_oft.py`), read into the math of <oft/lycoris.hpp>:
///
///   auto adapter = oft::io::LycorisAdapter::load("my_lycoris.safetensors");
///   const auto& m = adapter.module("lycoris_fc1");           // or LycorisAdapter::module_name("fc1")
///   oft::RowMatrix<float> merged = adapter.merge(m, w_view);  // what LyCORIS's merge_to writes
///
/// LyCORIS's keys, per adapted module (its name is the model's module path with '.' replaced by
/// '_', behind the network's prefix, "lycoris" by default: `lycoris_proj_out` for `proj.out`):
///   `<name>.oft_blocks`  [k, b, b]   dense blocks B; R comes from Q = B - B^T (no 1/2)
///   `<name>.alpha`       []          the norm constraint, ||Q||_F <= alpha * k * b (<= 0: off)
///   `<name>.rescale`     [k*b, 1...] optional per-output-channel factor ([out, 1] for Linear,
///                                    [out, 1, 1, 1] for Conv2d: LyCORIS's nn.Parameter shape)
/// The name alone cannot be mapped back to a module path ('.' and '_' are merged), so a
/// caller names the module it merges (module_name() builds LyCORIS's name from a path).
///
/// kohya sd-scripts' OFT files (`networks/oft.py`, github kohya-ss/sd-scripts @ 2d8ee3c; U-Net
/// only) have the same keys without rescale, every name behind kohya's prefix `oft_unet_`; they
/// differ in the constraint rule (lycoris::ConstraintRule::Kohya, see <oft/lycoris.hpp>), which
/// is what the reader's dialect decides: names starting with `oft_unet_` are kohya's, others
/// LyCORIS's, a file with both is refused, and load(path, dialect) overrides the detection.
/// kohya's FLUX files (`networks/oft_flux.py`, same commit) split a fused layer's output rows:
/// `<name>.oft_blocks.0`, `.1`, ... ([k, b_i, b_i] each, in row order) and one `<name>.alpha`,
/// each split its own diag-OFT with its own constraint alpha * k * b_i; such a module holds one
/// part per split (`splits`), always with kohya's rule. Its forward defines the format (kohya's
/// own merge_to for FLUX cannot run: docs/dialects.md); merge() is that forward's weight.
///
/// LyCORIS BOFT (algo "boft", `lycoris/modules/boft.py`) has the same three keys, with
///   `<name>.oft_blocks`  [m, N, b, b]  m butterfly stages of N blocks over out = N b channels
/// read into a module with `stages` = m (lycoris::Boft, <oft/lycoris.hpp>): b must be even and N
/// a multiple of 2^(m-1) (stage i pairs channels across 2^i b), or the tensor is refused naming
/// m, N and b. kohya sd-scripts has no BOFT: a 4-D oft_blocks in a kohya file is refused.
///
/// Detection (is_lycoris_diag_oft, is_lycoris_boft): a tensor `<name>.oft_blocks` of 3
/// dimensions (diag-OFT) or 4 (BOFT), as LyCORIS's own DiagOFTModule.algo_check and
/// ButterflyOFTModule.algo_check. The reader is strict: every tensor of the file must be one of
/// the three above, so a file mixing other LyCORIS algorithms (LoRA's lora_up, LoHa's hada_*) is
/// refused naming the tensor rather than merged in part. alpha is required (LyCORIS's loader
/// calls float(alpha) and fails without it).
///
/// inspect_lycoris() is what `oft inspect FILE.safetensors` reports per module (the side, b, k,
/// the constraint and how near it is to binding, rho, the orthogonality error at s = 1 and of
/// the blend at s = 1/2, the rescale range); to_json() its `--json` form.
///
/// Errors: format_error (a std::invalid_argument) naming the file, the tensor and the values:
/// no diag-OFT tensor in the file, oft_blocks not [k, b, b] with square blocks, an alpha that is
/// not one finite number, a rescale not of shape [k*b, 1, ...], a tensor of no module, a
/// non-float dtype. merge() refuses, with std::invalid_argument naming both shapes, a base
/// weight whose rows are not the k*b output channels the blocks rotate.

#include "../detail/intrinsics.hpp"  // before Eigen (GCC 12)

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../lycoris.hpp"
#include "detail/adapter_files.hpp"
#include "safetensors_reader.hpp"
#include "safetensors_writer.hpp"

namespace oft::io {

/// One LyCORIS diag-OFT or BOFT module (stages > 0: oft_blocks [stages, blocks, b, b]) as saved
/// (float, whatever dtype the file used: F32, F16, BF16 widen exactly; F64 is rounded to float,
/// as LyCORIS computes in float32).
struct LycorisDiagOftModule {
  std::string name;                   ///< LyCORIS's module name: "lycoris_fc1", "lycoris_proj_out"
  Index blocks = 0;                   ///< k
  Index block_size = 0;               ///< b
  std::vector<float> oft_blocks;      ///< k x b x b, row-major (LyCORIS's [k, b, b])
  float alpha = 0.0f;                 ///< the saved constraint (LyCORIS stores it as float32)
  std::vector<float> rescale;         ///< empty (no rescale) or k*b factors
  std::vector<std::uint64_t> rescale_shape;  ///< as saved: [k*b, 1] (Linear), [k*b, 1, 1, 1]...
  lycoris::ConstraintRule rule = lycoris::ConstraintRule::Lycoris;  ///< kohya's files: Kohya
  /// LyCORIS BOFT: m, with oft_blocks [m, N, b, b] (blocks = N per stage); 0 for diag-OFT.
  Index stages = 0;
  /// kohya FLUX only: one part per output-row split, in row order (each named by its tensor,
  /// `<name>.oft_blocks.<i>`, with the module's alpha); blocks and oft_blocks are empty then.
  std::vector<LycorisDiagOftModule> splits;

  Index out_features() const {
    if (splits.empty()) return blocks * block_size;
    Index out = 0;
    for (const LycorisDiagOftModule& part : splits) out += part.out_features();
    return out;
  }
  bool rescaled() const { return !rescale.empty(); }
  bool boft() const { return stages > 0; }

  /// A BOFT module's math (<oft/lycoris.hpp>) at LyCORIS multiplier `multiplier`. Throws
  /// std::invalid_argument for a diag-OFT module.
  lycoris::Boft<float> boft_op(double multiplier = 1.0) const {
    oft::detail::require(boft(), "module '", name, "' is LyCORIS diag-OFT, not BOFT: take diag_oft()");
    return lycoris::Boft<float>(stages, blocks, block_size, oft_blocks.data(), static_cast<double>(alpha),
                                rescale, multiplier);
  }

  /// The module's math (<oft/lycoris.hpp>) at LyCORIS multiplier `multiplier`. Throws
  /// std::invalid_argument for a split module (use its splits, or LycorisAdapter::merge).
  lycoris::DiagOft<float> diag_oft(double multiplier = 1.0) const {
    oft::detail::require(splits.empty(), "module '", name, "' is split into ", splits.size(),
                         " kohya FLUX parts: take splits[i].diag_oft(), or LycorisAdapter::merge");
    oft::detail::require(!boft(), "module '", name, "' is LyCORIS BOFT (", stages,
                         " stages): take boft_op(), or LycorisAdapter::merge");
    return lycoris::DiagOft<float>(blocks, block_size, oft_blocks.data(), static_cast<double>(alpha),
                                   rescale, multiplier, rule);
  }
};

class LycorisAdapter {
 public:
  /// Whose file it is: Detect (by the module names), or forced.
  enum class Dialect { Detect, Lycoris, Kohya };

  Dialect dialect = Dialect::Lycoris;           ///< as read: Lycoris or Kohya
  std::vector<LycorisDiagOftModule> modules;    ///< in key order (kohya FLUX split ones last)
  std::map<std::string, std::string> metadata;  ///< the file's __metadata__, written back by save()

  static constexpr const char* kBlocksSuffix = ".oft_blocks";
  static constexpr const char* kAlphaSuffix = ".alpha";
  static constexpr const char* kRescaleSuffix = ".rescale";
  static constexpr const char* kKohyaPrefix = "oft_unet_";  ///< networks/oft.py OFT_PREFIX_UNET

  /// "LyCORIS diag-OFT" or "kohya sd-scripts OFT", for messages and reports (a LyCORIS file may
  /// hold BOFT modules too).
  static const char* dialect_name(Dialect d) {
    return d == Dialect::Kohya ? "kohya sd-scripts OFT" : "LyCORIS diag-OFT";
  }

  /// LyCORIS's module name for the module path `path` of a model: `<prefix>_<path with '.' as
  /// '_'>` (LycorisNetwork: `f"{prefix}_{name}".replace(".", "_")`, prefix "lycoris" unless a
  /// preset sets lora_prefix).
  static std::string module_name(const std::string& path, const std::string& prefix = "lycoris") {
    std::string out = prefix + "_" + path;
    for (char& c : out)
      if (c == '.') c = '_';
    return out;
  }

  /// Whether `file` holds a LyCORIS diag-OFT module: a `<name>.oft_blocks` tensor of 3 dimensions
  /// (or kohya FLUX's `<name>.oft_blocks.<i>`).
  static bool is_lycoris_diag_oft(const SafetensorsFile& file) {
    std::string name;
    Index index = 0;
    for (const TensorInfo& info : file.tensors())
      if ((detail::ends_with(info.name, kBlocksSuffix) || split_key(info.name, name, index)) &&
          info.shape.size() == 3)
        return true;
    return false;
  }

  /// Whether `file` holds a LyCORIS BOFT module: a `<name>.oft_blocks` tensor of 4 dimensions.
  static bool is_lycoris_boft(const SafetensorsFile& file) {
    for (const TensorInfo& info : file.tensors())
      if (detail::ends_with(info.name, kBlocksSuffix) && info.shape.size() == 4) return true;
    return false;
  }

  /// Whether `key` is kohya FLUX's `<name>.oft_blocks.<i>`; sets name and i.
  static bool split_key(const std::string& key, std::string& name, Index& index) {
    const std::string marker = std::string(kBlocksSuffix) + ".";
    const std::size_t at = key.rfind(marker);
    if (at == std::string::npos) return false;
    const std::string digits = key.substr(at + marker.size());
    if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos)
      return false;
    name = key.substr(0, at);
    index = static_cast<Index>(std::stol(digits));
    return true;
  }

  /// Reads and validates the adapter file at `path` (see the file comment for what is refused);
  /// `dialect` Detect decides LyCORIS or kohya by the module names.
  static LycorisAdapter load(const std::filesystem::path& path, Dialect dialect = Dialect::Detect) {
    return read(SafetensorsFile::open(path), dialect);
  }

  /// The same from an open file.
  static LycorisAdapter read(const SafetensorsFile& file, Dialect dialect = Dialect::Detect) {
    const std::string where = file.path().string();
    const std::vector<std::string> names = file.tensor_names();
    if (!is_lycoris_diag_oft(file) && !is_lycoris_boft(file)) {
      std::ostringstream listed;
      for (std::size_t i = 0; i < names.size() && i < 6; ++i)
        listed << (i ? ", " : "") << detail::quote_name(names[i]);
      if (names.size() > 6) listed << ", ... (" << names.size() << " tensors)";
      detail::fail(where, "no LyCORIS diag-OFT module (a tensor <module>", kBlocksSuffix,
                   " of shape [k, b, b]) nor BOFT module ([m, N, b, b]); the file holds ",
                   names.empty() ? std::string("no tensor") : listed.str());
    }
    LycorisAdapter adapter;
    adapter.metadata = file.metadata();
    std::map<std::string, bool> used;
    std::string lycoris_key, kohya_key;  // one module name of each dialect, for the refusal
    std::map<std::string, std::map<Index, std::string>> split_parts;  // kohya FLUX
    for (const std::string& key : names) {
      std::string split_name;
      Index index = 0;
      if (split_key(key, split_name, index)) {
        split_parts[split_name][index] = key;
        continue;
      }
      if (!detail::ends_with(key, kBlocksSuffix)) continue;
      const std::string name = key.substr(0, key.size() - std::string(kBlocksSuffix).size());
      adapter.modules.push_back(read_module(file, name, key));
      if (!adapter.modules.back().boft()) (name.rfind(kKohyaPrefix, 0) == 0 ? kohya_key : lycoris_key) = key;
      used[key] = used[name + kAlphaSuffix] = used[name + kRescaleSuffix] = true;
    }
    for (const auto& [name, parts] : split_parts) {
      if (dialect == Dialect::Lycoris)
        detail::fail(where, "tensor ", detail::quote_name(parts.begin()->second),
                     " is a kohya FLUX split (networks/oft_flux.py), which the LyCORIS dialect has not");
      if (file.contains(name + kBlocksSuffix))
        detail::fail(where, "module ", detail::quote_name(name), " has both ",
                     detail::quote_name(name + kBlocksSuffix), " and the kohya FLUX split ",
                     detail::quote_name(parts.begin()->second));
      if (file.contains(name + kRescaleSuffix))
        detail::fail(where, "tensor ", detail::quote_name(name + kRescaleSuffix),
                     " in a kohya FLUX OFT module: kohya's OFT has no rescale (networks/oft_flux.py)");
      LycorisDiagOftModule m;
      m.name = name;
      m.rule = lycoris::ConstraintRule::Kohya;
      Index expected = 0;
      for (const auto& [index, key] : parts) {
        if (index != expected)
          detail::fail(where, "kohya FLUX module ", detail::quote_name(name), " has ",
                       detail::quote_name(key), " but no ",
                       detail::quote_name(name + kBlocksSuffix + "." + std::to_string(expected)),
                       ": the splits must be numbered 0, 1, ... in row order");
        ++expected;
        LycorisDiagOftModule part = read_module(file, name, key);
        if (part.boft())
          detail::fail(where, "tensor ", detail::quote_name(key), " ", detail::dims(file.tensor(key).shape),
                       " is a 4-D (BOFT) block tensor in a kohya FLUX split; kohya's splits are [k, b, b]");
        part.name = key;
        part.rule = lycoris::ConstraintRule::Kohya;
        m.alpha = part.alpha;
        m.splits.push_back(std::move(part));
        used[key] = true;
      }
      used[name + kAlphaSuffix] = true;
      if (kohya_key.empty() || name.rfind(kKohyaPrefix, 0) == 0) kohya_key = parts.begin()->second;
      adapter.modules.push_back(std::move(m));
    }
    if (dialect == Dialect::Detect) {
      if (!kohya_key.empty() && !lycoris_key.empty())
        detail::fail(where, "mixes kohya sd-scripts OFT modules (", detail::quote_name(kohya_key),
                     ": prefix '", kKohyaPrefix, "') with LyCORIS ones (", detail::quote_name(lycoris_key),
                     "), whose constraints differ; name the dialect to read it as one");
      dialect = kohya_key.empty() ? Dialect::Lycoris : Dialect::Kohya;
    }
    adapter.dialect = dialect;
    for (LycorisDiagOftModule& m : adapter.modules) {
      if (dialect != Dialect::Kohya) continue;
      if (m.boft())
        detail::fail(where, "tensor ", detail::quote_name(m.name + kBlocksSuffix), " [", m.stages, ", ",
                     m.blocks, ", ", m.block_size, ", ", m.block_size,
                     "] is LyCORIS BOFT, in a file read as kohya sd-scripts OFT (which has no BOFT)");
      m.rule = lycoris::ConstraintRule::Kohya;
      if (m.rescaled())
        detail::fail(where, "tensor ", detail::quote_name(m.name + kRescaleSuffix),
                     " in a kohya sd-scripts OFT file: kohya's OFT has no rescale (networks/oft.py)");
    }
    for (const std::string& key : names)
      if (!used.count(key))
        detail::fail(where, "tensor ", detail::quote_name(key), " ",
                     detail::dims(file.tensor(key).shape),
                     " belongs to no LyCORIS diag-OFT module nor BOFT module (each is <module>.oft_blocks, "
                     ".alpha and an optional .rescale); other LyCORIS algorithms are not read");
    return adapter;
  }

  /// The module called `name` (LyCORIS's name; throws std::out_of_range naming it).
  const LycorisDiagOftModule& module(const std::string& name) const {
    for (const LycorisDiagOftModule& m : modules)
      if (m.name == name) return m;
    throw std::out_of_range(oft::detail::message("oft: the LyCORIS adapter has no module '", name, "'"));
  }

  /// What LyCORIS's merge_to(multiplier) writes into module m's base weight (float, as LyCORIS
  /// computes for a float32 model): diag(rescale) (s R + (1 - s) I)^T W along the rows (output
  /// channels). `weight`: the base weight as [out, in] (a conv kernel flattened to
  /// [out, in * kh * kw]). Throws std::invalid_argument when its rows are not m's k*b channels.
  /// A kohya FLUX module merges each split's rows with its own part (the weight of kohya's
  /// forward, which concatenates the splits' outputs).
  static RowMatrix<float> merge(const LycorisDiagOftModule& m, ConstMatrixView<float> weight,
                                double multiplier = 1.0) {
    oft::detail::require(weight.rows() == m.out_features(), "LyCORIS module '", m.name,
                         "': base weight is ", weight.rows(), "x", weight.cols(), ", but ",
                         !m.splits.empty() ? oft::detail::message(m.splits.size(), " kohya FLUX splits")
                         : m.boft()        ? oft::detail::message("BOFT oft_blocks [", m.stages, ", ", m.blocks,
                                                                  ", ", m.block_size, ", ", m.block_size, "]")
                                           : oft::detail::message("oft_blocks [", m.blocks, ", ", m.block_size,
                                                                  ", ", m.block_size, "]"),
                         " rotate out=", m.out_features(), " output channels; another model's adapter?");
    if (m.boft()) return m.boft_op(multiplier).merge(weight);
    if (m.splits.empty()) return m.diag_oft(multiplier).merge(weight);
    RowMatrix<float> out(weight.rows(), weight.cols());
    Index row = 0;
    for (const LycorisDiagOftModule& part : m.splits) {
      const Index rows = part.out_features();
      out.block(row, 0, rows, weight.cols()) =
          part.diag_oft(multiplier).merge(weight.block(row, 0, rows, weight.cols()));
      row += rows;
    }
    return out;
  }

  /// Writes the adapter as LyCORIS's saver does (F32 tensors `<name>.oft_blocks` [k, b, b],
  /// `<name>.alpha` [], `<name>.rescale` as rescale_shape), atomically, with `metadata`. Every
  /// module is checked first: a malformed one throws std::invalid_argument and nothing is written.
  void save(const std::filesystem::path& path) const {
    SafetensorsWriter writer;
    for (const LycorisDiagOftModule& m : modules) {
      check_module(m);
      if (!m.splits.empty()) {  // kohya FLUX: each part under its own key, one alpha
        for (const LycorisDiagOftModule& part : m.splits)
          writer.add(part.name,
                     {static_cast<std::uint64_t>(part.blocks), static_cast<std::uint64_t>(part.block_size),
                      static_cast<std::uint64_t>(part.block_size)},
                     part.oft_blocks);
        writer.add(m.name + kAlphaSuffix, std::vector<std::uint64_t>{}, &m.alpha);
        continue;
      }
      std::vector<std::uint64_t> shape{static_cast<std::uint64_t>(m.blocks), static_cast<std::uint64_t>(m.block_size),
                                       static_cast<std::uint64_t>(m.block_size)};
      if (m.boft()) shape.insert(shape.begin(), static_cast<std::uint64_t>(m.stages));
      writer.add(m.name + kBlocksSuffix, shape, m.oft_blocks);
      writer.add(m.name + kAlphaSuffix, std::vector<std::uint64_t>{}, &m.alpha);
      if (m.rescaled()) writer.add(m.name + kRescaleSuffix, m.rescale_shape, m.rescale);
    }
    for (const auto& [key, value] : metadata) writer.add_metadata(key, value);
    writer.write(path);
  }

 private:
  static void check_module(const LycorisDiagOftModule& m) {
    if (!m.splits.empty()) {
      for (const LycorisDiagOftModule& part : m.splits) check_module(part);
      return;
    }
    const Index stages = m.boft() ? m.stages : 1;
    oft::detail::require(m.blocks >= 1 && m.block_size >= 1 && m.stages >= 0 &&
                             m.oft_blocks.size() == static_cast<std::size_t>(stages * m.blocks * m.block_size * m.block_size),
                         "LyCORIS module '", m.name, "': ", m.oft_blocks.size(),
                         " oft_blocks values for ", stages, " stage(s) of k=", m.blocks, " blocks of b=", m.block_size);
    if (m.boft())  // the butterfly shape (values are the math's concern: save writes any floats)
      oft::detail::require(m.block_size >= 2 && m.block_size % 2 == 0 && m.stages <= 62 &&
                               m.blocks % (Index{1} << (m.stages - 1)) == 0,
                           "LyCORIS module '", m.name, "': BOFT oft_blocks [", m.stages, ", ", m.blocks, ", ",
                           m.block_size, ", ", m.block_size, "]: N=", m.blocks, " blocks of b=", m.block_size,
                           " do not factor into m=", m.stages, " butterfly stages (b even, N a multiple of 2^(m-1))");
    oft::detail::require(std::isfinite(m.alpha), "LyCORIS module '", m.name, "': alpha ", m.alpha,
                         " is not finite");
    if (!m.rescaled()) return;
    oft::detail::require(rescale_shape_fits(m.rescale_shape, m.out_features()) &&
                             m.rescale.size() == static_cast<std::size_t>(m.out_features()),
                         "LyCORIS module '", m.name, "': rescale ", detail::dims(m.rescale_shape),
                         " with ", m.rescale.size(), " values, expected [", m.out_features(),
                         ", 1, ...] (out=k*b)");
  }

  /// [out, 1, ..., 1] with at least two dimensions: LyCORIS's `torch.ones(out_dim, *(1 for the
  /// weight's other dims))`, which broadcasts over a weight's rows. A 1-D [out] would broadcast
  /// over the columns instead, so it is refused.
  static bool rescale_shape_fits(const std::vector<std::uint64_t>& shape, Index out) {
    if (shape.size() < 2 || shape[0] != static_cast<std::uint64_t>(out)) return false;
    for (std::size_t i = 1; i < shape.size(); ++i)
      if (shape[i] != 1) return false;
    return true;
  }

  static std::vector<float> floats(const TensorView& t, const std::string& where) {
    if (t.dtype == Dtype::F64) {
      std::vector<float> out;
      for (const double v : t.copy_as<double>()) out.push_back(static_cast<float>(v));
      return out;
    }
    if (t.dtype != Dtype::F32 && t.dtype != Dtype::F16 && t.dtype != Dtype::BF16)
      detail::fail(where, "tensor ", detail::quote_name(t.name), " is ", dtype_name(t.dtype),
                   ", expected a float dtype (F32, F16, BF16 or F64)");
    return t.to_floats();
  }

  /// Module `name` with its blocks from tensor `blocks_key` (`<name>.oft_blocks`, or a FLUX split).
  static LycorisDiagOftModule read_module(const SafetensorsFile& file, const std::string& name,
                                          const std::string& blocks_key) {
    const std::string where = file.path().string();
    LycorisDiagOftModule m;
    m.name = name;
    const TensorView blocks = file.tensor(blocks_key);
    if (blocks.shape.size() == 4) return read_boft_module(file, name, blocks);
    const auto& shape = blocks.shape;
    if (shape.size() != 3 || shape[0] < 1 || shape[1] < 1 || shape[1] != shape[2] ||
        shape[1] > static_cast<std::uint64_t>(kMaxBlockSize))
      detail::fail(where, "tensor ", detail::quote_name(blocks.name), " is ", detail::dims(shape),
                   ", expected [k, b, b] (k >= 1 square blocks of 1 <= b <= ", kMaxBlockSize,
                   "; or [m, N, b, b] for LyCORIS BOFT)");
    m.blocks = static_cast<Index>(shape[0]);
    m.block_size = static_cast<Index>(shape[1]);
    oft::detail::require(m.blocks <= std::numeric_limits<Index>::max() / m.block_size,
                         where, ": tensor '", blocks.name, "' has too many channels");
    m.oft_blocks = floats(blocks, where);
    read_alpha_and_rescale(file, name, blocks, m);
    return m;
  }

  /// A LyCORIS BOFT module: oft_blocks [m, N, b, b] with b even and N a multiple of 2^(m-1).
  static LycorisDiagOftModule read_boft_module(const SafetensorsFile& file, const std::string& name,
                                               const TensorView& blocks) {
    const std::string where = file.path().string();
    const auto& shape = blocks.shape;
    if (shape[0] < 1 || shape[1] < 1 || shape[2] != shape[3] || shape[2] < 2 || shape[2] % 2 != 0 ||
        shape[2] > static_cast<std::uint64_t>(kMaxBlockSize) || shape[0] > 62)
      detail::fail(where, "tensor ", detail::quote_name(blocks.name), " is ", detail::dims(shape),
                   ", expected LyCORIS BOFT [m, N, b, b]: 1 <= m <= 62 stages of N >= 1 square blocks of an ",
                   "even size 2 <= b <= ", kMaxBlockSize);
    const std::uint64_t stride = std::uint64_t{1} << (shape[0] - 1);
    if (shape[1] % stride != 0)
      detail::fail(where, "tensor ", detail::quote_name(blocks.name), " is ", detail::dims(shape),
                   ": its block count N=", shape[1], " does not factor into m=", shape[0],
                   " butterfly stages (stage i pairs channels across 2^i b, so N must be a multiple of 2^(m-1)=",
                   stride, ")");
    if (shape[1] > static_cast<std::uint64_t>(std::numeric_limits<Index>::max()) / shape[2] / shape[2] / shape[0])
      detail::fail(where, "tensor ", detail::quote_name(blocks.name), " ", detail::dims(shape), " is too large");
    LycorisDiagOftModule m;
    m.name = name;
    m.stages = static_cast<Index>(shape[0]);
    m.blocks = static_cast<Index>(shape[1]);
    m.block_size = static_cast<Index>(shape[2]);
    m.oft_blocks = floats(blocks, where);
    read_alpha_and_rescale(file, name, blocks, m);
    return m;
  }

  /// `<name>.alpha` (required) and `<name>.rescale` (optional) of module m.
  static void read_alpha_and_rescale(const SafetensorsFile& file, const std::string& name,
                                     const TensorView& blocks, LycorisDiagOftModule& m) {
    const std::string where = file.path().string();
    const auto& shape = blocks.shape;

    const std::string alpha_key = name + kAlphaSuffix;
    if (!file.contains(alpha_key))
      detail::fail(where, "module ", detail::quote_name(name), " has ", detail::quote_name(blocks.name),
                   " but no ", detail::quote_name(alpha_key),
                   " (LyCORIS saves alpha with every diag-OFT and BOFT module and cannot load one without it)");
    const TensorView alpha = file.tensor(alpha_key);
    const std::vector<float> alpha_values = floats(alpha, where);
    if (alpha_values.size() != 1 || alpha.shape.size() > 1 || !std::isfinite(alpha_values[0]))
      detail::fail(where, "tensor ", detail::quote_name(alpha_key), " ", detail::dims(alpha.shape),
                   alpha_values.size() == 1 ? oft::detail::message(" = ", alpha_values[0]) : std::string(),
                   ": expected one finite number (shape [] or [1])");
    m.alpha = alpha_values[0];

    const std::string rescale_key = name + kRescaleSuffix;
    if (file.contains(rescale_key)) {
      const TensorView rescale = file.tensor(rescale_key);
      if (!rescale_shape_fits(rescale.shape, m.out_features()))
        detail::fail(where, "tensor ", detail::quote_name(rescale_key), " is ", detail::dims(rescale.shape),
                     ", expected [", m.out_features(), ", 1, ...]: one factor per output channel of ",
                     detail::quote_name(blocks.name), " ", detail::dims(shape), " (out=", m.boft() ? "N*b=" : "k*b=",
                     m.out_features(), ")");
      m.rescale = floats(rescale, where);
      m.rescale_shape = rescale.shape;
    }
  }
};

/// What `oft inspect` reports on one LyCORIS diag-OFT module (numbers in double).
struct LycorisModuleReport {
  std::string name;
  std::string dialect;         ///< "lycoris-diag-oft", "lycoris-boft" or "kohya-oft"
  Index stages = 0;            ///< BOFT: m butterfly stages (0 for diag-OFT)
  Index blocks = 0, block_size = 0, out_features = 0;  ///< k (BOFT: N per stage), b, out
  double alpha = 0.0;
  double radius = 0.0;         ///< alpha * out; 0 or less: no constraint
  double norm = 0.0;           ///< ||B - B^T||_F + 1e-8 over all blocks, before the constraint
  bool constraint_active = false;
  double constraint_factor = 1.0;  ///< what Q was scaled by (kohya with alpha = 0: ~1e-8 / n)
  double rho = 0.0;            ///< max over blocks of ||Q_i||_2 after the constraint
  double orthogonality = 0.0;  ///< max ||R_i^T R_i - I||_2 at s = 1 (R from float blocks)
  double blend_half = 0.0;     ///< the same of 0.5 R + 0.5 I: LyCORIS's multiplier 0.5 (BOFT:
                               ///< per stage block; the product of m blended stages drifts more)
  bool rescaled = false;
  double rescale_min = 1.0, rescale_max = 1.0;
  /// n / c: above 1 the constraint scales Q down by c / n; 0 when there is no constraint.
  double binding() const { return radius > 0.0 ? norm / radius : 0.0; }
};

namespace detail {
/// max over the generators' blocks of ||Q_i||_2.
inline double max_skew_norm(const Generators<double>& theta, Index b) {
  double rho = 0.0;
  SquareMatrix<double> q(b, b);
  for (Index g = 0; g < theta.count(); ++g) {
    unpack_skew(theta.row(g), b, q);
    // Q is skew: Q^T Q = -Q^2 is symmetric with eigenvalues lambda^2.
    const SquareMatrix<double> qtq = q.transpose() * q;
    const double top =
        Eigen::SelfAdjointEigenSolver<SquareMatrix<double>>(qtq, Eigen::EigenvaluesOnly).eigenvalues().maxCoeff();
    rho = std::max(rho, std::sqrt(std::max(top, 0.0)));
  }
  return rho;
}
}  // namespace detail

/// The report on every module of `adapter`, from its float data computed in double.
inline std::vector<LycorisModuleReport> inspect_lycoris(const LycorisAdapter& adapter) {
  std::vector<const LycorisDiagOftModule*> units;  // a kohya FLUX module reports each split
  for (const LycorisDiagOftModule& m : adapter.modules) {
    if (m.splits.empty()) units.push_back(&m);
    for (const LycorisDiagOftModule& part : m.splits) units.push_back(&part);
  }
  std::vector<LycorisModuleReport> out;
  for (const LycorisDiagOftModule* unit : units) {
    const LycorisDiagOftModule& m = *unit;
    LycorisModuleReport r;
    r.name = m.name;
    r.dialect = m.boft() ? "lycoris-boft"
                : m.rule == lycoris::ConstraintRule::Kohya ? "kohya-oft"
                                                           : "lycoris-diag-oft";
    r.stages = m.stages;
    r.blocks = m.blocks;
    r.block_size = m.block_size;
    r.out_features = m.out_features();
    r.alpha = double(m.alpha);
    const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
    r.rescaled = m.rescaled();
    if (r.rescaled) {
      const auto [lo, hi] = std::minmax_element(m.rescale.begin(), m.rescale.end());
      r.rescale_min = double(*lo);
      r.rescale_max = double(*hi);
    }
    // The same report from either module kind's math.
    const auto describe = [&](auto& op) {
      r.radius = op.constraint().radius;
      r.norm = op.constraint().norm;
      r.constraint_active = op.constraint().active;
      r.constraint_factor = op.constraint().factor;
      r.orthogonality = op.orthogonality_error();
      op.set_multiplier(0.5);
      r.blend_half = op.orthogonality_error();
      r.rho = detail::max_skew_norm(op.generators(), m.block_size);
    };
    if (m.boft()) {
      lycoris::Boft<double> op(m.stages, m.blocks, m.block_size, blocks.data(), double(m.alpha));
      describe(op);
    } else {
      lycoris::DiagOft<double> op(m.blocks, m.block_size, blocks.data(), double(m.alpha), {}, 1.0, m.rule);
      describe(op);
    }
    out.push_back(r);
  }
  return out;
}

/// The report as JSON (`oft inspect --json` on a LyCORIS file).
inline nlohmann::ordered_json to_json(const std::vector<LycorisModuleReport>& report) {
  std::string dialect = report.empty() ? "lycoris-diag-oft" : report.front().dialect;
  for (const LycorisModuleReport& r : report)
    if (r.dialect != dialect) dialect = "lycoris-diag-oft+boft";  // a LyCORIS file of both algos
  nlohmann::ordered_json out{{"dialect", dialect},
                             {"side", "output"},
                             {"modules", nlohmann::ordered_json::array()}};
  for (const LycorisModuleReport& r : report) {
    nlohmann::ordered_json j{{"name", r.name},
                             {"algo", r.stages > 0 ? "boft" : "diag-oft"},
                             {"stages", r.stages},
                             {"blocks", r.blocks},
                             {"block_size", r.block_size},
                             {"out_features", r.out_features},
                             {"alpha", r.alpha},
                             {"constraint_radius", r.radius},
                             {"q_norm", r.norm},
                             {"constraint_active", r.constraint_active},
                             {"constraint_factor", r.constraint_factor},
                             {"binding", r.binding()},
                             {"rho", r.rho},
                             {"orthogonality_error", r.orthogonality},
                             {"blend_half_orthogonality_error", r.blend_half},
                             {"rescaled", r.rescaled}};
    if (r.rescaled) j["rescale"] = {r.rescale_min, r.rescale_max};
    out["modules"].push_back(j);
  }
  return out;
}

}  // namespace oft::io
