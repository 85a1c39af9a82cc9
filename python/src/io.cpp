// oft._io, the model-file functions: thin wrappers over the library's merge, convert and inspect
// (include/oft/io/), the same functions the `oft` tool calls, so the three faces share one
// implementation: PEFT directories (merge_model, convert_adapter) and LyCORIS / kohya /
// OneTrainer files (merge_diffusion, convert_dialect). Reports come back as dicts (inspect's as
// the library's JSON, the schema of `oft inspect --json`); the progress callback gets one dict
// per tensor.
// The GIL is released while the library works and taken again only to call the callback.
// Its own module, compiled once (python/CMakeLists.txt says why), not once per level of _core.
#include <nanobind/nanobind.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <filesystem>
#include <oft/io/adapter_convert.hpp>
#include <oft/io/adapter_inspect.hpp>
#include <oft/io/inspect_any.hpp>
#include <oft/io/dialect.hpp>
#include <oft/io/dialect_convert.hpp>
#include <oft/io/diffusion_merge.hpp>
#include <oft/io/model_merge.hpp>
#include <optional>
#include <string>
#include <vector>

namespace nb = nanobind;

namespace {

oft::io::MergeDtype merge_dtype(const char* what, const std::string& name) {
  if (name == "same") return oft::io::MergeDtype::Same;
  if (name == "float32") return oft::io::MergeDtype::F32;
  if (name == "float16") return oft::io::MergeDtype::F16;
  if (name == "bfloat16") return oft::io::MergeDtype::BF16;
  throw nb::value_error((std::string(what) +
                         ": dtype must be None, 'float32', 'float16' or 'bfloat16', got '" + name +
                         "'")
                            .c_str());
}

/// "" (detect by the keys) or a name oft::io::parse_dialect takes; its refusal (a
/// std::invalid_argument listing the known names) reaches Python as ValueError.
std::optional<oft::io::Dialect> optional_dialect(const std::string& name) {
  if (name.empty()) return std::nullopt;
  return oft::io::parse_dialect(name);
}

/// The progress callback of merge_model and merge_diffusion: one dict per tensor, called with the
/// GIL taken again (the merge runs without it).
oft::io::MergeProgressCallback progress_callback(nb::object& progress) {
  if (progress.is_none()) return {};
  return [&progress](const oft::io::MergeProgress& p) {
    nb::gil_scoped_acquire gil;
    nb::dict d;
    d["tensors_done"] = p.tensors_done;
    d["tensors_total"] = p.tensors_total;
    d["bytes_done"] = p.bytes_done;
    d["bytes_total"] = p.bytes_total;
    d["current"] = p.current;
    progress(d);
  };
}

oft::io::GeneratorsDtype generators_dtype(const std::string& name) {
  if (name == "unchanged") return oft::io::GeneratorsDtype::Unchanged;
  if (name == "float32") return oft::io::GeneratorsDtype::F32;
  if (name == "float16") return oft::io::GeneratorsDtype::F16;
  if (name == "bfloat16") return oft::io::GeneratorsDtype::BF16;
  throw nb::value_error(("convert_adapter: generators_dtype must be None, 'float32', 'float16' or "
                         "'bfloat16', got '" +
                         name + "'")
                            .c_str());
}

nb::dict merge(const std::string& base, const std::string& adapter, const std::string& out,
               double strength, const std::string& dtype, bool force, bool unmerge,
               nb::object progress) {
  oft::io::MergeOptions options;
  options.base = base;
  options.adapter = adapter;
  options.out = out;
  options.strength = strength;
  options.dtype = merge_dtype("merge_model", dtype);
  options.force = force;
  options.unmerge = unmerge;
  const oft::io::MergeProgressCallback callback = progress_callback(progress);
  oft::io::MergeReport report;
  {
    nb::gil_scoped_release released;
    report = oft::io::merge_model(options, callback);
  }
  nb::dict d;
  d["tensors"] = report.tensors;
  d["shards"] = report.shards;
  nb::list adapted;
  for (const std::string& name : report.adapted) adapted.append(name);
  d["adapted"] = adapted;
  nb::list quantized;
  for (const oft::io::QuantizedLayerReport& q : report.quantized) {
    nb::dict layer;
    layer["layer"] = q.layer;
    layer["format"] = q.format;
    layer["double_quant"] = q.double_quant;
    layer["max_error"] = q.max_error;
    layer["rms_error"] = q.rms_error;
    layer["max_change"] = q.max_change;
    layer["rms_change"] = q.rms_change;
    quantized.append(layer);
  }
  d["quantized"] = quantized;
  d["other_files"] = report.other_files;
  d["bytes"] = report.bytes;
  return d;
}

// `oft inspect --json` (oft::io::inspect_any_adapter and its to_json, as the tool writes it);
// oft.inspect_adapter parses the string.
std::string inspect_json(const std::string& adapter, double tolerance, const std::string& dialect) {
  nb::gil_scoped_release released;
  return oft::io::to_json(oft::io::inspect_any_adapter(adapter, optional_dialect(dialect), tolerance))
      .dump();
}

nb::dict convert(const std::string& adapter, const std::string& out, const std::string& base,
                 bool expand_block_share, const std::string& dtype, bool to_current_polynomial,
                 bool allow_change, bool force) {
  oft::io::ConvertOptions options;
  options.adapter = adapter;
  options.out = out;
  options.base = base;
  options.expand_block_share = expand_block_share;
  options.generators_dtype = generators_dtype(dtype);
  options.to_current_polynomial = to_current_polynomial;
  options.allow_change = allow_change;
  options.force = force;
  oft::io::ConvertReport report;
  {
    nb::gil_scoped_release released;
    report = oft::io::convert_adapter(options);
  }
  nb::dict d;
  nb::list modules;
  for (const auto& m : report.modules) {
    nb::dict module;
    module["name"] = m.name;
    module["max_change"] = m.max_change;
    modules.append(module);
  }
  d["modules"] = modules;
  d["max_change"] = report.max_change;
  return d;
}

nb::dict merge_diffusion(const std::string& base, const std::string& adapter,
                         const std::string& out, std::optional<double> strength,
                         std::optional<double> blend, const std::string& dtype, bool force,
                         const std::string& dialect, std::optional<std::string> variant,
                         nb::object progress) {
  oft::io::DiffusionMergeOptions options;
  options.base = base;
  options.adapter = adapter;
  options.out = out;
  // Both given reach the library, whose refusal is the message Python shows.
  options.strength = strength;
  options.blend = blend;
  options.dtype = merge_dtype("merge_diffusion", dtype);
  options.force = force;
  options.dialect = optional_dialect(dialect);
  options.variant = variant;
  const oft::io::MergeProgressCallback callback = progress_callback(progress);
  oft::io::DiffusionMergeReport report;
  {
    nb::gil_scoped_release released;
    report = oft::io::merge_diffusion(options, callback);
  }
  nb::dict d;
  d["dialect"] = oft::io::dialect_name(report.dialect);
  nb::list targets;
  for (const oft::io::DiffusionTarget& t : report.targets) {
    nb::dict target;
    target["module"] = t.module;
    target["tensor"] = t.tensor;
    target["row_begin"] = t.row_begin;
    target["row_count"] = t.row_count;
    target["swap_halves"] = t.swap_halves;
    targets.append(target);
  }
  d["targets"] = targets;
  d["tensors"] = report.tensors;
  d["files"] = report.files;
  d["other_files"] = report.other_files;
  nb::list dropped;
  for (const std::string& name : report.dropped) dropped.append(name);
  d["dropped"] = dropped;
  d["bytes"] = report.bytes;
  d["blend_orthogonality_error"] = report.blend_orthogonality_error;
  return d;
}

// `oft convert --to`: `to` is the tool's word ("peft" is PEFT's OFT), checked by oft.io.
nb::dict convert_dialect(const std::string& adapter, const std::string& out, const std::string& to,
                         const std::string& from, bool allow_change, bool force, double tolerance) {
  oft::io::DialectConvertOptions options;
  options.adapter = adapter;
  options.out = out;
  options.to = to == "peft" ? oft::io::Dialect::PeftOft : oft::io::parse_dialect(to);
  options.from = optional_dialect(from);
  options.allow_change = allow_change;
  options.force = force;
  options.tolerance = tolerance;
  oft::io::DialectConvertReport report;
  {
    nb::gil_scoped_release released;
    report = oft::io::convert_dialect(options);
  }
  nb::dict d;
  d["from"] = oft::io::dialect_name(report.from);
  d["to"] = oft::io::dialect_name(report.to);
  nb::list modules;
  for (const auto& m : report.modules) {
    nb::dict module;
    module["name"] = m.name;
    module["written"] = m.written;
    module["change"] = m.change;
    module["note"] = m.note;
    modules.append(module);
  }
  d["modules"] = modules;
  d["max_change"] = report.max_change;
  d["round_trip"] = report.round_trip;
  return d;
}

}  // namespace

#ifndef OFT_PYTHON_ISA
#define OFT_PYTHON_ISA "unspecified"
#endif

NB_MODULE(_io, m) {
  m.def("merge_model", &merge, nb::arg("base"), nb::arg("adapter"), nb::arg("out"),
        nb::arg("strength"), nb::arg("dtype"), nb::arg("force"), nb::arg("unmerge"),
        nb::arg("progress").none(), "oft::io::merge_model (include/oft/io/model_merge.hpp).");
  m.def("inspect_adapter_json", &inspect_json, nb::arg("adapter"), nb::arg("tolerance"),
        nb::arg("dialect"),
        "What `oft inspect --json` writes, for an adapter of any dialect (tools/oft/inspect.cpp).");
  m.def("merge_diffusion", &merge_diffusion, nb::arg("base"), nb::arg("adapter"), nb::arg("out"),
        nb::arg("strength").none(), nb::arg("blend").none(), nb::arg("dtype"), nb::arg("force"),
        nb::arg("dialect"), nb::arg("variant").none(), nb::arg("progress").none(),
        "oft::io::merge_diffusion (include/oft/io/diffusion_merge.hpp).");
  m.def("convert_dialect", &convert_dialect, nb::arg("adapter"), nb::arg("out"), nb::arg("to"),
        nb::arg("dialect"), nb::arg("allow_change"), nb::arg("force"), nb::arg("tolerance"),
        "oft::io::convert_dialect (include/oft/io/dialect_convert.hpp).");
  m.def("convert_adapter", &convert, nb::arg("adapter"), nb::arg("out"), nb::arg("base"),
        nb::arg("expand_block_share"), nb::arg("generators_dtype"),
        nb::arg("to_current_polynomial"), nb::arg("allow_change"), nb::arg("force"),
        "oft::io::convert_adapter (include/oft/io/adapter_convert.hpp).");
  m.attr("level") = OFT_PYTHON_ISA;
}
