// oft._core's model-file functions: thin wrappers over the library's merge, convert and inspect
// (include/oft/io/), the same functions the `oft` tool calls, so the three faces share one
// implementation. Reports come back as dicts (inspect's as the library's JSON, the schema of
// `oft inspect --json`); the progress callback gets one dict per tensor.
// The GIL is released while the library works and taken again only to call the callback.
#include "io.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/string.h>

#include <oft/io/adapter_convert.hpp>
#include <oft/io/adapter_inspect.hpp>
#include <oft/io/model_merge.hpp>

namespace nb = nanobind;

namespace {

oft::io::MergeDtype merge_dtype(const std::string& name) {
  if (name == "same") return oft::io::MergeDtype::Same;
  if (name == "float32") return oft::io::MergeDtype::F32;
  if (name == "float16") return oft::io::MergeDtype::F16;
  if (name == "bfloat16") return oft::io::MergeDtype::BF16;
  throw nb::value_error(
      ("merge_model: dtype must be None, 'float32', 'float16' or 'bfloat16', got '" + name + "'")
          .c_str());
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
  options.dtype = merge_dtype(dtype);
  options.force = force;
  options.unmerge = unmerge;
  oft::io::MergeProgressCallback callback;
  if (!progress.is_none()) {
    callback = [&progress](const oft::io::MergeProgress& p) {
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

// The library's JSON (the schema of `oft inspect --json`); oft.inspect_adapter parses it.
std::string inspect_json(const std::string& adapter, double tolerance) {
  nb::gil_scoped_release released;
  return oft::io::to_json(oft::io::inspect_adapter(adapter, tolerance)).dump();
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

}  // namespace

void bind_io(nb::module_& m) {
  m.def("merge_model", &merge, nb::arg("base"), nb::arg("adapter"), nb::arg("out"),
        nb::arg("strength"), nb::arg("dtype"), nb::arg("force"), nb::arg("unmerge"),
        nb::arg("progress").none(), "oft::io::merge_model (include/oft/io/model_merge.hpp).");
  m.def("inspect_adapter_json", &inspect_json, nb::arg("adapter"), nb::arg("tolerance"),
        "oft::io::to_json(oft::io::inspect_adapter(...)) (include/oft/io/adapter_inspect.hpp).");
  m.def("convert_adapter", &convert, nb::arg("adapter"), nb::arg("out"), nb::arg("base"),
        nb::arg("expand_block_share"), nb::arg("generators_dtype"),
        nb::arg("to_current_polynomial"), nb::arg("allow_change"), nb::arg("force"),
        "oft::io::convert_adapter (include/oft/io/adapter_convert.hpp).");
  m.attr("has_io") = true;
}
