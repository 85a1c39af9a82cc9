#pragma once
/// \file io/model_merge.hpp
/// A PEFT OFT, BOFT or HRA adapter folded into (or out of) a Hugging Face model directory,
/// streamed tensor by tensor: merge_model(), the function behind `oft merge` / `oft unmerge` and
/// Python's oft.merge_model.
///
///   merge:   Linear W' = W0 R(sQ)^T, Embedding E' = E R(sQ)   (PeftOftAdapter::merge)
///   unmerge: the true inverse, per-block LU                   (PeftOftAdapter::unmerge)
///   BOFT:    W' = diag(s) W0 M^T, HRA: W' = W0 R_H, in double (PeftFamilyAdapter::merge);
///            no strength; unmerge the true inverse (PeftFamilyAdapter::unmerge)
///
/// The base is a directory holding either `model.safetensors.index.json` and its shards, or one
/// `*.safetensors` file (io/model_directory.hpp). The output directory gets the same files: every
/// shard under its own name, the index (its total_size updated when the dtype changes sizes), and
/// every other file of the base (config.json, tokenizer files, sub-directories) copied byte for
/// byte. Tensors the adapter does not touch are copied byte for byte too, unless a dtype
/// conversion was asked for.
///
/// Safety: everything that can be checked before writing is checked first (io/merge_plan.hpp);
/// the output is built in a hidden sibling directory and renamed into place only when complete
/// (io/atomic_directory.hpp), so a failure leaves no partial output; an existing output is
/// refused unless `force`.
///
/// Memory: each shard is written through SafetensorsWriter's deferred tensors, one tensor at a
/// time (as float, plus its merged copy), and each tensor's pages of the memory-mapped base are
/// released once it is written, so the peak resident memory is about the largest tensor, not the
/// model (bench/compare_merge.py measures it).
///
/// Quantized bases (bitsandbytes NF4/FP4, with or without double quantization, and LLM.int8,
/// read by their real keys, io/quantized_weights.hpp): an adapted layer is dequantized, merged in
/// float32 and requantized the way it was stored (same type, blocksize, dtype, double
/// quantization; int8 rows), and its tensors are replaced; quantization_config in config.json is
/// checked against each layer. The requantized layers are computed before anything is written
/// (they are checked then) and held until written: memory grows by the adapted layers' quantized
/// bytes. Each such layer gets a report: how far the stored result is from the float merge, and
/// how far the float merge moved the weight (docs/quant.md).
///
/// Messages name the options by the command-line flags of `oft merge` (`--out`, `--force`,
/// `--strength`), which are the MergeOptions fields of the same names.

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "atomic_directory.hpp"
#include "detail/half_bulk.hpp"
#include "merge_plan.hpp"
#include "model_directory.hpp"
#include "peft_adapter.hpp"
#include "peft_family_adapter.hpp"
#include "quantized_weights.hpp"
#include "safetensors_writer.hpp"

namespace oft::io {

/// The dtype merge_model writes the floating-point tensors in.
enum class MergeDtype {
  Same,  ///< each tensor in its own dtype (untouched tensors byte for byte)
  F32,
  F16,
  BF16,
};

/// What merge_model is asked to do.
struct MergeOptions {
  std::string base;       ///< model directory: model.safetensors, or an index and its shards
  std::string adapter;    ///< PEFT OFT, BOFT or HRA adapter directory
  std::string out;        ///< output directory, written whole or not at all
  double strength = 1.0;  ///< merges R(strength * Q); -1 gives R(-Q) (see docs/io.md); finite
  MergeDtype dtype = MergeDtype::Same;  ///< the floating-point tensors' output dtype
  bool force = false;                   ///< replace an existing output directory
  bool unmerge = false;  ///< take the adapter out (the true inverse) instead of folding it in
};

/// Progress after each tensor written: done/total tensors and bytes, and the tensor just written.
struct MergeProgress {
  std::size_t tensors_done = 0, tensors_total = 0;
  std::uint64_t bytes_done = 0, bytes_total = 0;
  std::string current;
};

/// Called after each tensor is written (from the calling thread); may be empty.
using MergeProgressCallback = std::function<void(const MergeProgress&)>;

/// A quantized layer merged and requantized: what the requantization cost.
struct QuantizedLayerReport {
  std::string layer;   ///< the module path in the base (its tensors' prefix)
  std::string format;  ///< nf4, fp4 or int8
  bool double_quant = false;
  double max_error = 0, rms_error = 0;    ///< |stored result - float merge|
  double max_change = 0, rms_change = 0;  ///< |float merge - dequantized base|
};

/// What merge_model wrote.
struct MergeReport {
  std::size_t tensors = 0;                      ///< tensors written
  std::size_t shards = 0;                       ///< safetensors files written
  std::vector<std::string> adapted;             ///< base tensor names the adapter changed
  std::vector<QuantizedLayerReport> quantized;  ///< the adapted layers that were quantized
  std::size_t other_files = 0;                  ///< files copied unchanged
  std::uint64_t bytes = 0;                      ///< bytes of the safetensors files written
};

namespace detail {

inline bool is_mergeable(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; }

inline Dtype merge_dtype(MergeDtype d) {
  switch (d) {
    case MergeDtype::F16:
      return Dtype::F16;
    case MergeDtype::BF16:
      return Dtype::BF16;
    default:
      return Dtype::F32;
  }
}

/// The adapter merge_model folds in: a PEFT OFT adapter, or a BOFT or HRA one (chosen by the
/// peft_type of adapter_config.json), and the one operation merge_model needs from it.
class MergeAdapter {
 public:
  static MergeAdapter load(const std::string& directory) {
    MergeAdapter adapter;
    if (is_peft_family_type(peft_type_of(directory)))
      adapter.family_ = PeftFamilyAdapter::load(directory);
    else
      adapter.oft_ = PeftOftAdapter::load(directory);  // says what is wrong with anything else
    return adapter;
  }
  MergeAdapter(const MergeAdapter&) = delete;  // the targets of plan() point into it
  MergeAdapter(MergeAdapter&&) = default;
  MergeAdapter& operator=(const MergeAdapter&) = delete;
  MergeAdapter& operator=(MergeAdapter&&) = delete;

  bool is_family() const { return family_.has_value(); }
  const char* family_name() const { return family_ ? peft_type_name(family_->family()) : "OFT"; }

  std::map<std::string, MergeTarget> plan(const ModelDirectory& base) const {
    return family_ ? plan_merge_targets(base, *family_) : plan_merge_targets(base, *oft_);
  }
  /// Throws std::invalid_argument unless a rows x cols weight fits the target's module.
  void check_width(const MergeTarget& target, Index rows, Index cols) const {
    if (family_)
      PeftFamilyAdapter::check_base(*target.family_module, rows, cols);
    else
      (void)PeftOftAdapter::spec_for(*target.module, rows, cols);
  }
  /// The target's weight merged (or unmerged) as `options` ask. BOFT and HRA are computed in
  /// double and rounded once (PEFT's float32 merge forms the dense rotation in float32).
  RowMatrix<float> apply(const MergeTarget& target, ConstMatrixView<float> weight,
                         const MergeOptions& options) const {
    if (!family_)
      return options.unmerge ? oft_->unmerge(*target.module, weight, options.strength)
                             : oft_->merge(*target.module, weight, options.strength);
    RowMatrix<double> wide(weight.rows(), weight.cols());
    for (Index i = 0; i < weight.rows(); ++i)
      for (Index j = 0; j < weight.cols(); ++j) wide(i, j) = static_cast<double>(weight(i, j));
    const RowMatrix<double> out = options.unmerge
                                      ? family_->unmerge<double>(*target.family_module, view(wide))
                                      : family_->merge<double>(*target.family_module, view(wide));
    return out.cast<float>();
  }

 private:
  MergeAdapter() = default;
  std::optional<PeftOftAdapter> oft_;
  std::optional<PeftFamilyAdapter> family_;
};

/// A quantized layer merged (or unmerged) and requantized as it was stored: the tensors that
/// replace its own, and the report.
struct RequantizedLayer {
  std::vector<StoredTensor> tensors;
  QuantizedLayerReport report;
};

inline RequantizedLayer merge_quantized(const ModelDirectory& source, const std::string& tensor,
                                        const MergeTarget& target, const MergeAdapter& adapter,
                                        const QuantizationConfig& config,
                                        const MergeOptions& options) {
  const std::string prefix = tensor.substr(0, tensor.size() - std::string(".weight").size());
  const StoredLinear layer = read_linear(source, prefix, config);
  adapter.check_width(target, layer.rows(), layer.cols());
  const std::vector<float> base = layer.dequantized();
  const ConstMatrixView<float> weight(base.data(), layer.rows(), layer.cols());
  const RowMatrix<float> merged = adapter.apply(target, weight, options);
  const std::vector<float> merged_values(merged.data(), merged.data() + merged.size());
  const StoredLinear requantized = requantized_like(layer, merged_values);
  const std::vector<float> stored = requantized.dequantized();

  RequantizedLayer out;
  out.tensors = write_linear_tensors(requantized);
  QuantizedLayerReport& r = out.report;
  r.layer = prefix;
  r.format = layer.format();
  r.double_quant = layer.nested.has_value();
  double error2 = 0, change2 = 0;
  for (std::size_t i = 0; i < base.size(); ++i) {
    const double error = std::fabs(double(stored[i]) - double(merged_values[i]));
    const double change = std::fabs(double(merged_values[i]) - double(base[i]));
    r.max_error = std::max(r.max_error, error);
    r.max_change = std::max(r.max_change, change);
    error2 += error * error;
    change2 += change * change;
  }
  r.rms_error = std::sqrt(error2 / double(base.size()));
  r.rms_change = std::sqrt(change2 / double(base.size()));
  for (const StoredTensor& t : out.tensors)
    if (!source.contains(t.name))  // a layout read_linear accepts always names existing keys
      throw std::logic_error("oft: requantized layer '" + prefix + "' writes '" + t.name +
                             "', which the base lacks");
  return out;
}

/// Writes `values` as `dtype` (F32, F16 or BF16; round to nearest even) at `out`.
inline void encode(const float* values, std::size_t count, Dtype dtype, std::byte* out) {
  if (dtype == Dtype::F32) {
    std::memcpy(out, values, count * sizeof(float));
    return;
  }
  if (dtype == Dtype::F16) {
    detail::floats_to_f16(values, count, out);
    return;
  }
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint16_t bits = float_to_bf16(values[i]);
    std::memcpy(out + 2 * i, &bits, 2);
  }
}

inline std::uint64_t bytes_as(const TensorView& v, Dtype dtype) {
  return v.numel() * static_cast<std::uint64_t>(dtype_bits(dtype) / 8);
}

/// Drops the pages of a read-only file mapping that hold [data, data + bytes) from this process's
/// resident memory (they stay in the page cache; touching them again reads them back). Whole
/// pages only: a neighbour's page may go too, which costs a re-read, never a wrong byte.
inline void release_pages(const std::byte* data, std::size_t bytes) {
  if (bytes == 0) return;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(data) / page * page;
  const auto end = reinterpret_cast<std::uintptr_t>(data) + bytes;
  (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // advice only
}

/// A tensor's output dtype and shape, as stream_file asks for them.
using TensorLayout = std::pair<Dtype, std::vector<std::uint64_t>>;

/// One safetensors file of a base streamed into `destination` (atomically: SafetensorsWriter),
/// its tensors in their own order and its metadata kept: `layout(view)` gives each tensor's
/// output dtype and shape, `produce(view, out, bytes)` writes its bytes. Every tensor is deferred,
/// even one copied as it is, and its pages of the memory-mapped base are released once written,
/// so the resident memory stays about one tensor (a plain add(view) would leave the whole base
/// mapped in). merge_model writes its shards with it, merge_diffusion (io/diffusion_merge.hpp)
/// its files.
inline void stream_file(
    const SafetensorsFile& file, const std::filesystem::path& destination,
    const std::function<TensorLayout(const TensorView&)>& layout,
    const std::function<void(const TensorView&, std::byte*, std::size_t)>& produce) {
  SafetensorsWriter writer;
  for (const auto& [key, value] : file.metadata()) writer.add_metadata(key, value);
  for (const auto& info : file.tensors()) {
    const TensorView v = file.view(info);
    TensorLayout out = layout(v);
    writer.add_deferred(v.name, out.first, std::move(out.second));
  }
  writer.write(destination, [&](const std::string& name, std::byte* dst, std::size_t bytes) {
    const TensorView v = file.tensor(name);
    produce(v, dst, bytes);
    release_pages(v.data, v.bytes);
  });
}

/// Copies every file and directory under `base` whose relative path (generic form) is not in
/// `written` into the same place under `staging`, byte for byte; returns the files copied.
inline std::size_t copy_other_files(const std::filesystem::path& base,
                                    const std::filesystem::path& staging,
                                    const std::set<std::string>& written) {
  namespace fs = std::filesystem;
  std::size_t copied = 0;
  for (auto it = fs::recursive_directory_iterator(base); it != fs::recursive_directory_iterator();
       ++it) {
    const fs::path relative = fs::relative(it->path(), base);
    if (written.count(relative.generic_string()) != 0) continue;
    if (it->is_directory()) {
      fs::create_directories(staging / relative);
    } else if (it->is_regular_file()) {
      fs::create_directories((staging / relative).parent_path());
      fs::copy_file(it->path(), staging / relative);
      ++copied;
    }
  }
  return copied;
}

}  // namespace detail

/// Folds the adapter `options.adapter` into the model `options.base` (or takes it out, with
/// `options.unmerge`) and writes the model directory `options.out`; see the file comment.
/// `progress`, when set, is called after each tensor. Throws std::invalid_argument (bad options,
/// an adapter for another model), std::domain_error, oft::io::format_error (a malformed file) or
/// std::system_error (the file system), leaving no output behind.
inline MergeReport merge_model(const MergeOptions& options,
                               const MergeProgressCallback& progress = {}) {
  namespace fs = std::filesystem;
  using namespace detail;
  const bool convert = options.dtype != MergeDtype::Same;
  const Dtype wanted = merge_dtype(options.dtype);
  if (!std::isfinite(options.strength))
    throw std::invalid_argument(
        oft::detail::message("oft: --strength ", options.strength, " is not finite"));
  const fs::path out_option = options.out;
  if (out_option.empty() || !out_option.has_filename())
    throw std::invalid_argument("oft: --out '" + out_option.string() + "' names no directory");
  const fs::path out = fs::absolute(out_option);
  if (fs::exists(out) && !options.force)
    throw std::invalid_argument("oft: output '" + out_option.string() +
                                "' exists (pass --force to replace it)");
  if (fs::exists(options.base) && fs::exists(out) && fs::equivalent(options.base, out))
    throw std::invalid_argument("oft: --out is the base directory itself");

  const MergeAdapter adapter = MergeAdapter::load(options.adapter);
  if (adapter.is_family() && options.strength != 1.0)
    throw std::invalid_argument(oft::detail::message(
        "oft: --strength ", options.strength, ": a ", adapter.family_name(),
        " adapter merges at strength 1 only (PEFT defines no strength for it)"));
  const ModelDirectory base = ModelDirectory::open(options.base);
  const std::map<std::string, MergeTarget> targets = adapter.plan(base);

  MergeReport report;
  // Quantized layers: merged and requantized now, so that every check runs before writing.
  std::map<std::string, StoredTensor> replaced;
  {
    const QuantizationConfig config = QuantizationConfig::load(options.base);
    for (const auto& [name, target] : targets) {
      if (!target.quantized) continue;
      RequantizedLayer layer = merge_quantized(base, name, target, adapter, config, options);
      for (StoredTensor& t : layer.tensors) replaced[t.name] = std::move(t);
      report.quantized.push_back(std::move(layer.report));
    }
  }

  // Quantized tensors are not converted to another dtype (they are not float).
  const auto output_dtype = [&](const TensorView& v) {
    return convert && is_mergeable(v.dtype) && replaced.count(v.name) == 0 ? wanted : v.dtype;
  };
  MergeProgress state;
  for (const auto& file : base.files)
    for (const auto& info : file.tensors()) {
      const TensorView v = file.view(info);
      ++state.tensors_total;
      const auto r = replaced.find(v.name);
      state.bytes_total +=
          r != replaced.end() ? r->second.bytes.size() : bytes_as(v, output_dtype(v));
    }

  // Build everything in a hidden sibling, rename at the end.
  const fs::path staging = staging_directory(out);
  fs::remove_all(staging);
  fs::create_directories(staging);
  RemoveOnFailure cleanup(staging);

  const auto advance = [&](const std::string& name, std::size_t bytes) {
    ++state.tensors_done;
    state.bytes_done += bytes;
    state.current = name;
    if (progress) progress(state);
  };
  std::set<std::string> written;  // relative paths produced from tensors
  for (std::size_t f = 0; f < base.files.size(); ++f) {
    const SafetensorsFile& file = base.files[f];
    const auto layout = [&](const TensorView& v) -> TensorLayout {
      const auto r = replaced.find(v.name);
      if (r != replaced.end()) return {r->second.dtype, r->second.shape};
      return {output_dtype(v), v.shape};
    };
    const auto produce = [&](const TensorView& v, std::byte* dst, std::size_t bytes) {
      const std::string& name = v.name;
      const auto r = replaced.find(name);
      if (r != replaced.end()) {  // a requantized layer's tensor
        if (bytes != 0) std::memcpy(dst, r->second.bytes.data(), bytes);
        if (targets.count(name) != 0) report.adapted.push_back(name);
        advance(name, bytes);
        return;
      }
      const auto it = targets.find(name);
      if (it == targets.end() && output_dtype(v) == v.dtype) {
        if (bytes != 0) std::memcpy(dst, v.data, bytes);
        advance(name, bytes);
        return;
      }
      std::vector<float> values = v.to_floats();
      release_pages(v.data, v.bytes);  // now, not after the merge: the float copy is enough
      if (it != targets.end()) {
        const auto rows = static_cast<Index>(v.shape[0]), cols = static_cast<Index>(v.shape[1]);
        const ConstMatrixView<float> weight(values.data(), rows, cols);
        const RowMatrix<float> changed = adapter.apply(it->second, weight, options);
        std::memcpy(values.data(), changed.data(), values.size() * sizeof(float));
        report.adapted.push_back(name);
      }
      encode(values.data(), values.size(), output_dtype(v), dst);
      advance(name, bytes);
    };
    const fs::path destination = staging / base.file_names[f];
    fs::create_directories(destination.parent_path());
    stream_file(file, destination, layout, produce);
    report.tensors += file.size();
    report.bytes += fs::file_size(destination);
    ++report.shards;
    written.insert(base.file_names[f]);
  }

  // The index: byte for byte, unless the sizes changed (then total_size is rewritten).
  if (!base.index_path.empty()) {
    const std::string index_name = base.index_path.filename().string();
    written.insert(index_name);
    if (convert) {
      std::ifstream in(base.index_path);
      nlohmann::ordered_json index = nlohmann::ordered_json::parse(in);
      if (!index.contains("metadata") || !index["metadata"].is_object())
        index["metadata"] = nlohmann::ordered_json::object();
      index["metadata"]["total_size"] = state.bytes_total;
      std::ofstream(staging / index_name) << index.dump(2) << "\n";
    } else {
      fs::copy_file(base.index_path, staging / index_name);
    }
  }
  // Every other file of the base, byte for byte.
  report.other_files = detail::copy_other_files(options.base, staging, written);

  commit_directory(staging, out);
  cleanup.release();
  return report;
}

}  // namespace oft::io
