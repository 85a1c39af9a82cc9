// Compiled (not run) with -Wall -Wextra -Wpedantic -Wshadow -Wconversion (-Werror in CI): the
// oft::io headers must stay warning-free for users who build with strict flags. Templates are
// only checked when instantiated, so every typed accessor and writer overload is used here.

#include <oft/io/adapter_convert.hpp>
#include <oft/io/adapter_inspect.hpp>
#include <oft/io/dialect.hpp>
#include <oft/io/diffusion_merge.hpp>
#include <oft/io/dialect_convert.hpp>
#include <oft/io/lycoris_adapter.hpp>
#include <oft/io/model_merge.hpp>
#include <oft/io/onetrainer_adapter.hpp>
#include <oft/io/peft_adapter.hpp>
#include <oft/io/peft_conv.hpp>
#include <oft/io/peft_family_adapter.hpp>
#include <oft/io/quantized_weights.hpp>
#include <oft/io/safetensors.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace {

template <class T>
void use_type(const oft::io::TensorView& view, oft::io::SafetensorsWriter& writer) {
  const oft::io::ConstSpan<T> span = view.as<T>();
  (void)span.size();
  const std::vector<T> copy = view.copy_as<T>();
  writer.add("t", {static_cast<std::uint64_t>(copy.size())}, copy.data());
  writer.add("v", {static_cast<std::uint64_t>(copy.size())}, copy);
}

[[maybe_unused]] void use_peft_family_adapter() {
  const auto adapter = oft::io::PeftFamilyAdapter::load("adapter");
  const oft::RowMatrix<float> base = oft::RowMatrix<float>::Zero(4, 8);
  (void)adapter.merge<float>(adapter.modules.at(0), oft::view(base));
  (void)adapter.unmerge<float>(adapter.modules.at(0), oft::view(base));
  adapter.save("copy");
}

[[maybe_unused]] void use_peft_adapter() {
  const auto adapter = oft::io::PeftOftAdapter::load("adapter");
  const oft::RowMatrix<float> base = oft::RowMatrix<float>::Zero(4, 8);
  (void)adapter.merge(adapter.modules.at(0), oft::view(base), 0.5);
  (void)adapter.effective_generators(adapter.modules.at(0));
  (void)adapter.config.policy();
  adapter.save("out");
}

[[maybe_unused]] void use_onetrainer_adapter() {
  using oft::io::OneTrainerAdapter;
  const auto adapter = OneTrainerAdapter::load("onetrainer.safetensors");
  const auto file = oft::io::SafetensorsFile::open("onetrainer.safetensors");
  (void)OneTrainerAdapter::is_onetrainer(file);
  const oft::io::OneTrainerModule& m = adapter.module("lora_unet_conv_in");
  const oft::RowMatrix<double> base = oft::RowMatrix<double>::Zero(4, m.rows * m.block_size);
  const std::vector<double> starts(static_cast<std::size_t>(m.rows * m.block_size), 1.0);
  (void)OneTrainerAdapter::merge(m, oft::view(base), oft::onetrainer::Layer::Conv2d, 0.5);
  (void)OneTrainerAdapter::merge(m, oft::view(base), oft::onetrainer::Layer::Linear, 1.0,
                                 starts.data());
  adapter.save("copy.safetensors");
  (void)oft::io::to_json(oft::io::inspect_onetrainer(adapter));
  const oft::io::Dialect d = oft::io::detect_dialect(std::filesystem::path("adapter"));
  (void)oft::io::dialect_name(d);
  (void)oft::io::parse_dialect("onetrainer");
  (void)oft::io::detect_dialect(file);
}

[[maybe_unused]] void use_dialect_convert() {
  oft::io::DialectConvertOptions options;
  options.adapter = "adapter";
  options.out = "out.safetensors";
  const oft::io::DialectConvertReport report = oft::io::convert_dialect(options);
  (void)report.max_change;
  (void)oft::io::to_json(oft::io::summarize(oft::io::inspect_adapter("adapter", 1e-6)).at(0));
  (void)oft::io::summarize(oft::io::inspect_onetrainer(oft::io::OneTrainerAdapter::load("o")));
  (void)oft::io::summarize(oft::io::inspect_lycoris(oft::io::LycorisAdapter::load("l")));
}

[[maybe_unused]] void use_lycoris_adapter() {
  using oft::io::LycorisAdapter;
  const auto adapter = LycorisAdapter::load("lycoris.safetensors", LycorisAdapter::Dialect::Kohya);
  const auto file = oft::io::SafetensorsFile::open("lycoris.safetensors");
  (void)LycorisAdapter::is_lycoris_diag_oft(file);
  (void)LycorisAdapter::read(file);
  const oft::io::LycorisDiagOftModule& m = adapter.module(LycorisAdapter::module_name("proj.out"));
  const oft::RowMatrix<float> base = oft::RowMatrix<float>::Zero(m.out_features(), 8);
  (void)LycorisAdapter::merge(m, oft::view(base), 0.5);
  (void)m.diag_oft(0.5).merge(oft::view(base));
  (void)LycorisAdapter::dialect_name(adapter.dialect);
  adapter.save("copy.safetensors");
  const auto report = oft::io::inspect_lycoris(adapter);
  (void)report.front().binding();
  (void)oft::io::to_json(report);
}

[[maybe_unused]] void use_model_functions() {
  oft::io::MergeOptions merge;
  merge.dtype = oft::io::MergeDtype::BF16;
  (void)oft::io::merge_model(merge, [](const oft::io::MergeProgress& p) { (void)p.bytes_done; });
  oft::io::ConvertOptions convert;
  convert.generators_dtype = oft::io::GeneratorsDtype::F16;
  (void)oft::io::convert_adapter(convert);
  (void)oft::io::inspect_adapter(std::string("adapter"), 1e-6);
  const auto model = oft::io::ModelDirectory::open("model");
  (void)oft::io::read_linear(model, "layer", oft::io::QuantizationConfig::load("model"));
  (void)oft::io::stored_by_bitsandbytes(model, "layer");
}

[[maybe_unused]] void use_all() {
  const auto file = oft::io::SafetensorsFile::open("model.safetensors");
  const auto view = file.tensor("w");
  oft::io::SafetensorsWriter writer;
  use_type<double>(view, writer);
  use_type<float>(view, writer);
  use_type<oft::float16>(view, writer);
  use_type<oft::bfloat16>(view, writer);
  use_type<std::int64_t>(view, writer);
  use_type<std::uint64_t>(view, writer);
  use_type<std::int32_t>(view, writer);
  use_type<std::uint32_t>(view, writer);
  use_type<std::int16_t>(view, writer);
  use_type<std::uint16_t>(view, writer);
  use_type<std::int8_t>(view, writer);
  use_type<std::uint8_t>(view, writer);
  (void)view.to_floats();
  writer.add(view);
  writer.add_metadata("format", "pt");
  writer.write("out.safetensors");
  (void)writer.serialize();
  const auto model = oft::io::ShardedSafetensors::open("model.safetensors.index.json");
  (void)model.tensor("w");
  (void)model.index_metadata();
  (void)oft::io::to_float(oft::io::to_float16(1.0f));
  (void)oft::io::to_float(oft::io::to_bfloat16(1.0f));
}

}  // namespace
