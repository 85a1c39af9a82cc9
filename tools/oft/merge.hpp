#pragma once
// `oft merge` and `oft unmerge`: a PEFT OFT adapter folded into (or out of) a Hugging Face model
// directory, streamed tensor by tensor.
//
//   merge:   Linear W' = W0 R(sQ)^T, Embedding E' = E R(sQ)   (PeftOftAdapter::merge)
//   unmerge: the true inverse, per-block LU                   (PeftOftAdapter::unmerge)
//
// The base is a directory holding either `model.safetensors.index.json` and its shards, or one
// `*.safetensors` file. The output directory gets the same files: every shard under its own name,
// the index (its total_size updated when --dtype changes sizes), and every other file of the base
// (config.json, tokenizer files, sub-directories) copied byte for byte. Tensors the adapter does
// not touch are copied byte for byte too, unless --dtype converts them.
//
// Safety: everything that can be checked before writing is checked first (each module finds
// exactly one 2-D floating-point base tensor of a width it can rotate; no two modules share one);
// the output is built in a hidden sibling directory and renamed into place only when complete,
// so a failure leaves no partial output; an existing output is refused unless --force.
//
// Memory: each shard is written through SafetensorsWriter's deferred tensors, one tensor at a
// time (as float, plus its merged copy), and each tensor's pages of the memory-mapped base are
// released once it is written, so the peak resident memory is about the largest tensor, not the
// model (bench/compare_merge.py measures it).
//
// Quantized bases (bitsandbytes NF4/FP4, with or without double quantization, and LLM.int8,
// read by their real keys, io/quantized_linear.hpp): an adapted layer is dequantized, merged in
// float32 and requantized the way it was stored (same type, blocksize, dtype, double
// quantization; int8 rows), and its tensors are replaced; quantization_config in config.json is
// checked against each layer. The requantized layers are computed before anything is written
// (they are checked then) and held until written: memory grows by the adapted layers' quantized
// bytes. Each such layer gets a report: how far the stored result is from the float merge, and
// how far the float merge moved the weight (docs/quant.md).

#include <oft/io/peft_adapter.hpp>
#include <oft/io/quantized_linear.hpp>
#include <oft/io/sharded.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace oft_cli {

namespace fs = std::filesystem;

/// What `oft merge` / `oft unmerge` were asked to do.
struct MergeOptions {
  fs::path base;
  fs::path adapter;
  fs::path out;
  double strength = 1.0;     ///< merges R(strength * Q); -1 gives R(-Q) (see docs/io.md)
  std::string dtype = "same";  ///< same | f32 | f16 | bf16: the floating-point tensors' output dtype
  bool force = false;        ///< replace an existing output directory
  bool unmerge = false;      ///< take the adapter out instead of folding it in
};

/// Progress after each tensor: done/total tensors and bytes written so far.
struct MergeProgress {
  std::size_t tensors_done = 0, tensors_total = 0;
  std::uint64_t bytes_done = 0, bytes_total = 0;
  std::string current;
};

/// A quantized layer merged and requantized: what the requantization cost.
struct QuantizedLayerReport {
  std::string layer;    ///< the module path in the base (its tensors' prefix)
  std::string format;   ///< nf4, fp4 or int8
  bool double_quant = false;
  double max_error = 0, rms_error = 0;    ///< |stored result - float merge|
  double max_change = 0, rms_change = 0;  ///< |float merge - dequantized base|
};

/// What was written.
struct MergeReport {
  std::size_t tensors = 0;                ///< tensors written
  std::size_t shards = 0;                 ///< safetensors files written
  std::vector<std::string> adapted;       ///< base tensor names the adapter changed
  std::vector<QuantizedLayerReport> quantized;  ///< the adapted layers that were quantized
  std::size_t other_files = 0;            ///< files copied unchanged
  std::uint64_t bytes = 0;                ///< tensor bytes written
};

namespace merge_detail {

using oft::io::Dtype;

inline bool is_float16ish(Dtype d) { return d == Dtype::F16 || d == Dtype::BF16; }
inline bool is_mergeable(Dtype d) { return d == Dtype::F32 || is_float16ish(d); }

inline Dtype parse_dtype(const std::string& name) {
  if (name == "f32") return Dtype::F32;
  if (name == "f16") return Dtype::F16;
  if (name == "bf16") return Dtype::BF16;
  throw std::invalid_argument("oft: --dtype " + name + ": expected same, f32, f16 or bf16");
}

/// The base model: one file or an index over shards, as one name -> (file, view) map.
struct BaseModel {
  fs::path directory;
  fs::path index_path;  ///< empty for a single file
  std::vector<oft::io::SafetensorsFile> files;
  std::vector<std::string> file_names;  ///< relative to directory, as the index names them

  static BaseModel open(const fs::path& directory) {
    if (!fs::is_directory(directory))
      throw std::invalid_argument("oft: base '" + directory.string() +
                                  "' is not a directory (a Hugging Face model directory is expected)");
    BaseModel model;
    model.directory = directory;
    const fs::path index = directory / "model.safetensors.index.json";
    if (fs::exists(index)) {
      model.index_path = index;
      const oft::io::ShardedSafetensors sharded = oft::io::ShardedSafetensors::open(index);  // validates all
      std::set<std::string> names;
      for (const auto& shard : sharded.shards())
        names.insert(fs::relative(shard.path(), directory).generic_string());
      for (const std::string& name : names) {
        model.file_names.push_back(name);
        model.files.push_back(oft::io::SafetensorsFile::open(directory / name));
      }
      return model;
    }
    std::vector<std::string> found;
    for (const auto& entry : fs::directory_iterator(directory))
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors")
        found.push_back(entry.path().filename().string());
    if (found.size() != 1)
      throw std::invalid_argument(oft::detail::message(
          "oft: base '", directory.string(), "' has ", found.size(),
          " .safetensors files and no model.safetensors.index.json; expected one file or an index"));
    model.file_names = found;
    model.files.push_back(oft::io::SafetensorsFile::open(directory / found.front()));
    return model;
  }
};

/// Where each adapter module lands in the base: its tensor name, file and view.
struct Target {
  const oft::io::PeftOftModule* module = nullptr;
  std::size_t file = 0;
  oft::io::TensorView view;
  bool quantized = false;  ///< stored by bitsandbytes (quant_state or SCB beside the weight)
};

/// Whether the layer whose weight is `tensor` (`<prefix>.weight`) is stored quantized, by the
/// keys bitsandbytes writes beside it.
inline bool is_quantized_layer(const std::map<std::string, std::size_t>& where, const std::string& tensor) {
  const std::string prefix = tensor.substr(0, tensor.size() - std::string(".weight").size());
  return where.count(prefix + ".SCB") != 0 || where.count(tensor + ".quant_state.bitsandbytes__nf4") != 0 ||
         where.count(tensor + ".quant_state.bitsandbytes__fp4") != 0;
}

/// The base tensor of module `m`: `<name>.weight`, or the one tensor ending in `.<name>.weight`
/// (a model saved with a prefix such as `bert.`, adapted without it, or the other way round).
inline std::map<std::string, Target> plan_targets(const BaseModel& base, const oft::io::PeftOftAdapter& adapter) {
  std::map<std::string, std::size_t> where;  // tensor -> file
  for (std::size_t f = 0; f < base.files.size(); ++f)
    for (const std::string& name : base.files[f].tensor_names()) where[name] = f;
  std::map<std::string, Target> targets;
  for (const oft::io::PeftOftModule& m : adapter.modules) {
    const std::string exact = m.name + ".weight";
    std::vector<std::string> candidates;
    if (where.count(exact) != 0) {
      candidates.push_back(exact);
    } else {
      const std::string tail = "." + exact;
      for (const auto& [name, file] : where)
        if (name.size() > tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0)
          candidates.push_back(name);
      // A module path with a prefix the base lacks (e.g. adapted `model.x`, saved `x`).
      for (std::size_t dot = m.name.find('.'); candidates.empty() && dot != std::string::npos;
           dot = m.name.find('.', dot + 1))
        if (where.count(m.name.substr(dot + 1) + ".weight") != 0) candidates.push_back(m.name.substr(dot + 1) + ".weight");
    }
    if (candidates.empty() && where.count(m.name + ".qweight") != 0)
      throw std::invalid_argument(oft::detail::message(
          "oft: adapter module '", m.name, "' is stored as GPTQ/AWQ int4 ('", m.name,
          ".qweight'): requantizing a merge needs GPTQ/AWQ's calibration-based quantizer, which oft does not "
          "have; merge into the float model, or keep the adapter unmerged (QoftLinear runs on the int4 base)"));
    if (candidates.empty())
      throw std::invalid_argument(oft::detail::message("oft: the base has no tensor for adapter module '", m.name,
                                                       "' (looked for '", exact, "' and '*.", exact,
                                                       "'): an adapter for another model?"));
    if (candidates.size() > 1)
      throw std::invalid_argument(oft::detail::message("oft: adapter module '", m.name, "' matches ",
                                                       candidates.size(), " base tensors ('", candidates[0], "', '",
                                                       candidates[1], "', ...): ambiguous"));
    const std::string& name = candidates.front();
    if (targets.count(name) != 0)
      throw std::invalid_argument(oft::detail::message("oft: adapter modules '", targets.at(name).module->name,
                                                       "' and '", m.name, "' both target base tensor '", name, "'"));
    Target t;
    t.module = &m;
    t.file = where.at(name);
    t.view = base.files[t.file].tensor(name);
    t.quantized = is_quantized_layer(where, name);
    if (t.quantized) {  // its shape comes from the quant_state (checked when it is read)
      targets.emplace(name, std::move(t));
      continue;
    }
    const std::string at = oft::detail::message("base tensor '", name, "' (", t.view.file, ")");
    if (t.view.shape.size() == 4)
      throw std::invalid_argument(oft::detail::message(
          "oft: ", at, " is 4-D, a Conv2d weight: oft does not merge Conv2d OFT adapters (PEFT's own Conv2d "
          "path is inconsistent; see docs/io.md)"));
    if (t.view.shape.size() != 2)
      throw std::invalid_argument(oft::detail::message("oft: ", at, " has ", t.view.shape.size(),
                                                       " dimensions; module '", m.name, "' needs a 2-D weight"));
    if (!is_mergeable(t.view.dtype))
      throw std::invalid_argument(oft::detail::message("oft: ", at, " is ", oft::io::dtype_name(t.view.dtype),
                                                       "; merging needs F32, F16 or BF16, or a quantized layer stored by bitsandbytes (no quant_state or SCB "
                                                       "found beside it)"));
    (void)oft::io::PeftOftAdapter::spec_for(m, static_cast<oft::Index>(t.view.shape[0]),
                                            static_cast<oft::Index>(t.view.shape[1]));
    targets.emplace(name, std::move(t));
  }
  return targets;
}

/// All tensors of the base by name, as io::read_linear reads a layer.
struct BaseSource {
  const BaseModel* model = nullptr;
  std::map<std::string, std::size_t> where;  // tensor -> file

  explicit BaseSource(const BaseModel& m) : model(&m) {
    for (std::size_t f = 0; f < m.files.size(); ++f)
      for (const std::string& name : m.files[f].tensor_names()) where[name] = f;
  }
  bool contains(const std::string& name) const { return where.count(name) != 0; }
  oft::io::TensorView tensor(const std::string& name) const { return model->files[where.at(name)].tensor(name); }
};

/// A quantized layer merged (or unmerged) and requantized as it was stored: the tensors that
/// replace its own, and the report.
struct RequantizedLayer {
  std::vector<oft::io::StoredTensor> tensors;
  QuantizedLayerReport report;
};

inline RequantizedLayer merge_quantized(const BaseSource& source, const std::string& tensor, const Target& target,
                                        const oft::io::PeftOftAdapter& adapter, const oft::io::QuantizationConfig& config,
                                        const MergeOptions& options) {
  const std::string prefix = tensor.substr(0, tensor.size() - std::string(".weight").size());
  const oft::io::StoredLinear layer = oft::io::read_linear(source, prefix, config);
  (void)oft::io::PeftOftAdapter::spec_for(*target.module, layer.rows(), layer.cols());  // the width fits
  const std::vector<float> base = layer.dequantized();
  const oft::ConstMatrixView<float> weight(base.data(), layer.rows(), layer.cols());
  const oft::RowMatrix<float> merged = options.unmerge ? adapter.unmerge(*target.module, weight, options.strength)
                                                       : adapter.merge(*target.module, weight, options.strength);
  const std::vector<float> merged_values(merged.data(), merged.data() + merged.size());
  const oft::io::StoredLinear requantized = oft::io::requantized_like(layer, merged_values);
  const std::vector<float> stored = requantized.dequantized();

  RequantizedLayer out;
  out.tensors = oft::io::write_linear_tensors(requantized);
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
  for (const oft::io::StoredTensor& t : out.tensors)
    if (!source.contains(t.name))  // a layout read_linear accepts always names existing keys
      throw std::logic_error("oft: requantized layer '" + prefix + "' writes '" + t.name + "', which the base lacks");
  return out;
}

/// Writes `values` as `dtype` (F32, F16 or BF16; round to nearest even) at `out`.
inline void encode(const float* values, std::size_t count, Dtype dtype, std::byte* out) {
  if (dtype == Dtype::F32) {
    std::memcpy(out, values, count * sizeof(float));
    return;
  }
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint16_t bits =
        dtype == Dtype::F16 ? oft::io::float_to_f16(values[i]) : oft::io::float_to_bf16(values[i]);
    std::memcpy(out + 2 * i, &bits, 2);
  }
}

inline std::uint64_t bytes_as(const oft::io::TensorView& v, Dtype dtype) {
  return v.numel() * static_cast<std::uint64_t>(oft::io::dtype_bits(dtype) / 8);
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

/// The hidden sibling where `out` is built before commit_directory renames it into place.
inline fs::path staging_directory(const fs::path& out) {
  return out.parent_path() /
         oft::detail::message(".", out.filename().string(), ".oft-partial-", static_cast<long>(::getpid()));
}

/// Renames the complete `staging` to `out`, replacing an existing `out` only now.
inline void commit_directory(const fs::path& staging, const fs::path& out) {
  if (!fs::exists(out)) {
    fs::rename(staging, out);
    return;
  }
  const fs::path old = out.parent_path() / oft::detail::message(".", out.filename().string(), ".oft-old-",
                                                                 static_cast<long>(::getpid()));
  fs::rename(out, old);
  fs::rename(staging, out);
  fs::remove_all(old);
}

/// Removes a directory tree on destruction unless released (the partial output on failure).
class RemoveOnFailure {
 public:
  explicit RemoveOnFailure(fs::path path) : path_(std::move(path)) {}
  RemoveOnFailure(const RemoveOnFailure&) = delete;
  RemoveOnFailure& operator=(const RemoveOnFailure&) = delete;
  ~RemoveOnFailure() {
    if (!path_.empty()) {
      std::error_code ignored;
      fs::remove_all(path_, ignored);
    }
  }
  void release() { path_.clear(); }

 private:
  fs::path path_;
};

}  // namespace merge_detail

/// Runs `oft merge` (or unmerge); see the file comment. Throws std::invalid_argument,
/// std::domain_error, oft::io::format_error or std::system_error, leaving no output behind.
inline MergeReport merge_model(const MergeOptions& options,
                               const std::function<void(const MergeProgress&)>& progress = {}) {
  using namespace merge_detail;
  const bool convert = options.dtype != "same";
  const Dtype wanted = convert ? parse_dtype(options.dtype) : Dtype::F32;
  if (!std::isfinite(options.strength))
    throw std::invalid_argument(oft::detail::message("oft: --strength ", options.strength, " is not finite"));
  if (options.out.empty() || !options.out.has_filename())
    throw std::invalid_argument("oft: --out '" + options.out.string() + "' names no directory");
  const fs::path out = fs::absolute(options.out);
  if (fs::exists(out) && !options.force)
    throw std::invalid_argument("oft: output '" + options.out.string() + "' exists (pass --force to replace it)");
  if (fs::exists(options.base) && fs::exists(out) && fs::equivalent(options.base, out))
    throw std::invalid_argument("oft: --out is the base directory itself");

  const oft::io::PeftOftAdapter adapter = oft::io::PeftOftAdapter::load(options.adapter);
  const BaseModel base = BaseModel::open(options.base);
  const std::map<std::string, Target> targets = plan_targets(base, adapter);

  MergeReport report;
  // Quantized layers: merged and requantized now, so that every check runs before writing.
  std::map<std::string, oft::io::StoredTensor> replaced;
  {
    const BaseSource source(base);
    const oft::io::QuantizationConfig config = oft::io::QuantizationConfig::load(options.base);
    for (const auto& [name, target] : targets) {
      if (!target.quantized) continue;
      RequantizedLayer layer = merge_quantized(source, name, target, adapter, config, options);
      for (oft::io::StoredTensor& t : layer.tensors) replaced[t.name] = std::move(t);
      report.quantized.push_back(std::move(layer.report));
    }
  }

  // Quantized tensors are not converted by --dtype (they are not float).
  const auto output_dtype = [&](const oft::io::TensorView& v) {
    return convert && is_mergeable(v.dtype) && replaced.count(v.name) == 0 ? wanted : v.dtype;
  };
  MergeProgress state;
  for (const auto& file : base.files)
    for (const auto& info : file.tensors()) {
      const oft::io::TensorView v = file.view(info);
      ++state.tensors_total;
      const auto r = replaced.find(v.name);
      state.bytes_total += r != replaced.end() ? r->second.bytes.size() : bytes_as(v, output_dtype(v));
    }

  // Build everything in a hidden sibling, rename at the end.
  const fs::path staging = staging_directory(out);
  fs::remove_all(staging);
  fs::create_directories(staging);
  RemoveOnFailure cleanup(staging);

  std::set<std::string> written;  // relative paths produced from tensors
  for (std::size_t f = 0; f < base.files.size(); ++f) {
    const oft::io::SafetensorsFile& file = base.files[f];
    oft::io::SafetensorsWriter writer;
    for (const auto& [key, value] : file.metadata()) writer.add_metadata(key, value);
    // Every tensor is deferred, even one copied as it is: after it is written, its pages of the
    // memory-mapped base are released, so the resident memory stays about one tensor (a plain
    // add(view) would leave the whole base mapped in).
    for (const auto& info : file.tensors()) {
      const oft::io::TensorView v = file.view(info);
      const auto r = replaced.find(v.name);
      if (r != replaced.end())
        writer.add_deferred(v.name, r->second.dtype, r->second.shape);
      else
        writer.add_deferred(v.name, output_dtype(v), v.shape);
    }
    const auto fill = [&](const std::string& name, std::byte* dst, std::size_t bytes) {
      const oft::io::TensorView v = file.tensor(name);
      const auto r = replaced.find(name);
      if (r != replaced.end()) {  // a requantized layer's tensor
        if (bytes != 0) std::memcpy(dst, r->second.bytes.data(), bytes);
        release_pages(v.data, v.bytes);
        if (targets.count(name) != 0) report.adapted.push_back(name);
        ++state.tensors_done;
        state.bytes_done += bytes;
        state.current = name;
        if (progress) progress(state);
        return;
      }
      const auto it = targets.find(name);
      if (it == targets.end() && output_dtype(v) == v.dtype) {
        if (bytes != 0) std::memcpy(dst, v.data, bytes);
        release_pages(v.data, v.bytes);
        ++state.tensors_done;
        state.bytes_done += bytes;
        state.current = name;
        if (progress) progress(state);
        return;
      }
      std::vector<float> values = v.to_floats();
      release_pages(v.data, v.bytes);
      if (it != targets.end()) {
        const auto rows = static_cast<oft::Index>(v.shape[0]), cols = static_cast<oft::Index>(v.shape[1]);
        const oft::ConstMatrixView<float> weight(values.data(), rows, cols);
        const oft::RowMatrix<float> changed = options.unmerge
                                                  ? adapter.unmerge(*it->second.module, weight, options.strength)
                                                  : adapter.merge(*it->second.module, weight, options.strength);
        std::memcpy(values.data(), changed.data(), values.size() * sizeof(float));
        report.adapted.push_back(name);
      }
      encode(values.data(), values.size(), output_dtype(v), dst);
      (void)bytes;
      ++state.tensors_done;
      state.bytes_done += bytes;
      state.current = name;
      if (progress) progress(state);
    };
    const fs::path destination = staging / base.file_names[f];
    fs::create_directories(destination.parent_path());
    writer.write(destination, fill);
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
      if (!index.contains("metadata") || !index["metadata"].is_object()) index["metadata"] = nlohmann::ordered_json::object();
      index["metadata"]["total_size"] = state.bytes_total;
      std::ofstream(staging / index_name) << index.dump(2) << "\n";
    } else {
      fs::copy_file(base.index_path, staging / index_name);
    }
  }
  // Every other file of the base, byte for byte.
  for (auto it = fs::recursive_directory_iterator(options.base); it != fs::recursive_directory_iterator(); ++it) {
    const fs::path relative = fs::relative(it->path(), options.base);
    const std::string key = relative.generic_string();
    if (written.count(key) != 0) continue;
    if (it->is_directory()) {
      fs::create_directories(staging / relative);
    } else if (it->is_regular_file()) {
      fs::create_directories((staging / relative).parent_path());
      fs::copy_file(it->path(), staging / relative);
      ++report.other_files;
    }
  }

  commit_directory(staging, out);
  cleanup.release();
  return report;
}

/// A one-line progress bar on a terminal (stderr): "[#####.....] 12/40 tensors  1.2/3.4 GB  name".
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  void operator()(const MergeProgress& p) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    const bool last = p.tensors_done == p.tensors_total;
    if (!last && now - shown_ < std::chrono::milliseconds(100)) return;
    shown_ = now;
    const double fraction = p.bytes_total == 0 ? 1.0 : static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total);
    const int width = 30, filled = static_cast<int>(fraction * width + 0.5);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.append(static_cast<std::size_t>(width - filled), '.');
    std::string name = p.current.size() > 40 ? "..." + p.current.substr(p.current.size() - 37) : p.current;
    std::fprintf(stderr, "\r[%s] %zu/%zu tensors  %.2f/%.2f GB  %-40s", bar.c_str(), p.tensors_done, p.tensors_total,
                 static_cast<double>(p.bytes_done) / 1e9, static_cast<double>(p.bytes_total) / 1e9, name.c_str());
    if (last) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point shown_{};
};

}  // namespace oft_cli
