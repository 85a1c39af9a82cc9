#pragma once
/// \file io/quantized_weights.hpp
/// A linear layer's frozen weight read from a checkpoint, quantized or not, by the key names the
/// quantizing library writes, with the model's `quantization_config` (config.json) as a
/// cross-check. The result is a frozen base for the QOFT layer (quant/qoft_linear.hpp) and for
/// merging (quant/merge.hpp, io/model_merge.hpp); write_linear_tensors() gives the tensors back in
/// the same layout, so a merged model is stored as it was read.
///
/// Layouts read (prefix = the module path, e.g. `model.layers.0.self_attn.q_proj`):
///
///   float        `prefix.weight` F32/F16/BF16 [out, in]
///   NF4 / FP4    `prefix.weight` U8 [(out*in+1)/2, 1] (bitsandbytes Linear4bit, uint8 storage),
///                `prefix.weight.absmax` (F32 [blocks]; U8 with double quantization),
///                `prefix.weight.quant_map` F32 [16],
///                `prefix.weight.quant_state.bitsandbytes__nf4|fp4` U8: JSON bytes with quant_type,
///                blocksize, dtype, shape and, with double quantization, nested_blocksize,
///                nested_offset; then also `prefix.weight.nested_absmax` F32 and
///                `prefix.weight.nested_quant_map` F32 [256]
///   LLM.int8     `prefix.weight` I8 [out, in], `prefix.SCB` F32 [out], optional
///                `prefix.weight_format` U8 scalar (0 = row-major, the only layout stored)
///   GPTQ int4    `prefix.qweight` I32 [in/8, out], `prefix.qzeros` I32 [groups, out/8],
///                `prefix.scales` F16 [groups, out], `prefix.g_idx` I32 [in] (optional: i/group);
///                quantization_config (quant_method "gptq", bits 4, group_size,
///                checkpoint_format "gptq" = zeros stored minus one, or "gptq_v2") is required
///   AWQ int4     `prefix.qweight` I32 [in, out/8], `prefix.qzeros` I32 [groups, out/8],
///                `prefix.scales` F16 [groups, out]; quantization_config (quant_method "awq",
///                bits 4, group_size, version "gemm") is required
///   any          `prefix.bias` F32/F16/BF16 [out], optional
///
/// Everything is checked before a value is used: the JSON against the tensors (quant_type and
/// the key's suffix, shape and the packed size, absmax and nested counts, the code tables), and
/// both against quantization_config when one is given. A mismatch is an oft::io::format_error
/// naming the key, what it holds and what was expected.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "../quant/bnb4.hpp"
#include "../quant/bnb4_double.hpp"
#include "../quant/frozen_base.hpp"
#include "../quant/int4_base.hpp"
#include "../quant/int4_group.hpp"
#include "../quant/int8.hpp"
#include "errors.hpp"
#include "tensor_view.hpp"

namespace oft::io {

/// What reading weights needs of a model's `quantization_config` (transformers' config.json).
struct QuantizationConfig {
  std::string method;         ///< "" (none), "bitsandbytes", "gptq", "awq"
  bool load_in_4bit = false;  ///< bitsandbytes
  bool load_in_8bit = false;
  std::string bnb_4bit_quant_type;  ///< "nf4" / "fp4" ("" when not said)
  std::optional<bool> bnb_4bit_use_double_quant;
  std::optional<long long> bits;        ///< gptq / awq
  std::optional<long long> group_size;  ///< gptq / awq (-1: one group)
  std::string checkpoint_format;        ///< gptq: "gptq" (default) or "gptq_v2"
  std::string version;                  ///< awq: "gemm" (others are refused)
  std::optional<bool> zero_point;       ///< awq

  /// From config.json's object (its "quantization_config" member) or from that member itself.
  /// A config without one is an unquantized model (method ""). Throws format_error on a member of
  /// the wrong type.
  static QuantizationConfig from_json(const nlohmann::json& json,
                                      const std::string& where = "config.json") {
    QuantizationConfig c;
    const nlohmann::json* q = &json;
    if (json.is_object() && json.contains("quantization_config"))
      q = &json["quantization_config"];
    else if (!(json.is_object() && json.contains("quant_method")))
      return c;
    if (!q->is_object())
      throw format_error("oft: " + where + ": quantization_config is not an object");
    const auto text = [&](const char* key) -> std::string {
      if (!q->contains(key) || (*q)[key].is_null()) return {};
      if (!(*q)[key].is_string())
        throw format_error("oft: " + where + ": quantization_config." + key + " is " +
                           (*q)[key].dump() + ", expected a string");
      return (*q)[key].get<std::string>();
    };
    const auto flag = [&](const char* key) -> std::optional<bool> {
      if (!q->contains(key) || (*q)[key].is_null()) return std::nullopt;
      if (!(*q)[key].is_boolean())
        throw format_error("oft: " + where + ": quantization_config." + key + " is " +
                           (*q)[key].dump() + ", expected true or false");
      return (*q)[key].get<bool>();
    };
    c.method = text("quant_method");
    c.load_in_4bit = flag("load_in_4bit").value_or(false);
    c.load_in_8bit = flag("load_in_8bit").value_or(false);
    c.bnb_4bit_quant_type = text("bnb_4bit_quant_type");
    c.bnb_4bit_use_double_quant = flag("bnb_4bit_use_double_quant");
    const auto integer = [&](const char* key) -> std::optional<long long> {
      if (!q->contains(key) || (*q)[key].is_null()) return std::nullopt;
      if (!(*q)[key].is_number_integer())
        throw format_error("oft: " + where + ": quantization_config." + key + " is " +
                           (*q)[key].dump() + ", expected an integer");
      return (*q)[key].get<long long>();
    };
    c.bits = integer(c.method == "awq" && !q->contains("bits") ? "w_bit" : "bits");
    c.group_size =
        integer(c.method == "awq" && !q->contains("group_size") ? "q_group_size" : "group_size");
    c.checkpoint_format = text("checkpoint_format");
    c.version = text("version");
    c.zero_point = flag("zero_point");
    return c;
  }

  /// config.json read from a model directory (or the file itself); none there: unquantized.
  static QuantizationConfig load(const std::filesystem::path& directory_or_file) {
    std::filesystem::path path = directory_or_file;
    if (std::filesystem::is_directory(path)) path /= "config.json";
    if (!std::filesystem::exists(path)) return {};
    std::ifstream in(path);
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw format_error("oft: " + path.string() + " is not valid JSON: " + e.what());
    }
    return from_json(json, path.string());
  }
};

/// A linear layer's frozen weight as stored.
struct StoredLinear {
  using Base =
      std::variant<quant::DenseFloatBase, quant::Bnb4Base, quant::Int8Base, quant::Int4GroupBase>;

  StoredLinear(std::string prefix_, Base base_)
      : prefix(std::move(prefix_)), base(std::move(base_)) {}

  std::string prefix;
  Base base;
  Dtype dense_dtype = Dtype::F32;                 ///< float layers: the stored dtype
  std::optional<quant::Bnb4NestedAbsmax> nested;  ///< NF4/FP4 with double quantization
  nlohmann::ordered_json quant_state;             ///< NF4/FP4: the stored JSON, as read
  std::vector<float> bias;                        ///< empty when the layer has none
  Dtype bias_dtype = Dtype::F32;

  Index rows() const {
    return std::visit([](const auto& b) { return b.rows(); }, base);
  }
  Index cols() const {
    return std::visit([](const auto& b) { return b.cols(); }, base);
  }
  const char* format() const {
    return std::visit([](const auto& b) { return b.format(); }, base);
  }
  bool quantized() const { return !std::holds_alternative<quant::DenseFloatBase>(base); }
  /// The weight as the format dequantizes it (float32, row-major).
  std::vector<float> dequantized() const {
    return std::visit([](const auto& b) { return quant::dequantize_all<float>(b); }, base);
  }
};

namespace detail {

inline std::string shape_text(const TensorView& v) { return detail::dims(v.shape); }

template <class Source>
TensorView need(const Source& source, const std::string& name, Dtype dtype,
                const std::string& why) {
  if (!source.contains(name))
    throw format_error("oft: " + why + ": the checkpoint has no tensor '" + name + "'");
  TensorView v = source.tensor(name);
  if (v.dtype != dtype)
    throw format_error(oft::detail::message("oft: tensor '", name, "' is ", dtype_name(v.dtype),
                                            ", expected ", dtype_name(dtype), " (", why, ")"));
  return v;
}

inline void need_count(const TensorView& v, std::uint64_t count, const std::string& what) {
  if (v.numel() != count)
    throw format_error(oft::detail::message("oft: tensor '", v.name, "' has shape ", shape_text(v),
                                            " (", v.numel(), " values); ", what, " needs ", count));
}

template <class Source>
std::optional<std::string> bnb4_state_key(const Source& source, const std::string& prefix,
                                          quant::Bnb4Type* type) {
  std::optional<std::string> found;
  for (quant::Bnb4Type t : {quant::Bnb4Type::NF4, quant::Bnb4Type::FP4}) {
    const std::string key = prefix + ".weight.quant_state.bitsandbytes__" + quant::name(t);
    if (!source.contains(key)) continue;
    if (found)
      throw format_error("oft: layer '" + prefix + "' has both an nf4 and an fp4 quant_state");
    found = key;
    *type = t;
  }
  return found;
}

inline const nlohmann::ordered_json& member(const nlohmann::ordered_json& json, const char* key,
                                            const std::string& where) {
  if (!json.contains(key)) throw format_error("oft: " + where + " has no \"" + key + "\"");
  return json[key];
}

inline Index positive_integer(const nlohmann::ordered_json& value, const std::string& what) {
  if (!value.is_number_integer() || value.get<long long>() <= 0)
    throw format_error("oft: " + what + " is " + value.dump() + ", expected a positive integer");
  return static_cast<Index>(value.get<long long>());
}

template <class Source>
StoredLinear read_bnb4(const Source& source, const std::string& prefix,
                       const std::string& state_key, quant::Bnb4Type type,
                       const QuantizationConfig& config) {
  const TensorView state_bytes = need(source, state_key, Dtype::U8, "the 4-bit quant_state");
  const std::string text(reinterpret_cast<const char*>(state_bytes.data), state_bytes.bytes);
  const std::string where = "quant_state '" + state_key + "'";
  nlohmann::ordered_json s;
  try {
    s = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw format_error("oft: " + where + " is not valid JSON: " + e.what());
  }
  if (!s.is_object()) throw format_error("oft: " + where + " is not a JSON object");
  const nlohmann::ordered_json& qt = member(s, "quant_type", where);
  if (!qt.is_string() || qt.get<std::string>() != quant::name(type))
    throw format_error("oft: " + where + " says quant_type " + qt.dump() + ", its key says \"" +
                       quant::name(type) + "\"");
  const Index blocksize = positive_integer(member(s, "blocksize", where), where + " blocksize");
  if (!quant::bnb4_blocksize_allowed(blocksize))
    throw format_error(
        oft::detail::message("oft: ", where, " has blocksize ", blocksize,
                             ", which bitsandbytes does not allow (32, 64, ..., 4096)"));
  const nlohmann::ordered_json& shape = member(s, "shape", where);
  if (!shape.is_array() || shape.size() != 2)
    throw format_error("oft: " + where + " has shape " + shape.dump() + ", expected [out, in]");
  const Index rows = positive_integer(shape[0], where + " shape[0]");
  const Index cols = positive_integer(shape[1], where + " shape[1]");
  quant::DequantDtype dtype = quant::DequantDtype::F32;
  if (s.contains("dtype")) {
    const std::string d =
        s["dtype"].is_string() ? s["dtype"].get<std::string>() : s["dtype"].dump();
    if (d == "float16")
      dtype = quant::DequantDtype::F16;
    else if (d == "bfloat16")
      dtype = quant::DequantDtype::BF16;
    else if (d != "float32")
      throw format_error("oft: " + where + " has dtype " + s["dtype"].dump() +
                         ", expected \"float32\", \"float16\" or \"bfloat16\"");
  }

  quant::Bnb4Tensor t;
  t.type = type;
  t.numel = rows * cols;
  t.blocksize = blocksize;
  const Index blocks = quant::bnb4_blocks(t.numel, blocksize);
  const std::string layer = "a " + std::to_string(rows) + "x" + std::to_string(cols) + " " +
                            quant::name(type) + " weight";
  const TensorView packed = need(source, prefix + ".weight", Dtype::U8,
                                 "the packed 4-bit weight (bitsandbytes' uint8 storage)");
  need_count(packed, static_cast<std::uint64_t>(quant::bnb4_packed_bytes(t.numel)), layer);
  t.packed = packed.copy_as<std::uint8_t>();

  const TensorView code = need(source, prefix + ".weight.quant_map", Dtype::F32, "the 4-bit code");
  need_count(code, 16, "a 4-bit code");
  const std::vector<float> stored_code = code.copy_as<float>();
  if (std::memcmp(stored_code.data(), quant::bnb4_code(type).data(), 16 * sizeof(float)) != 0)
    throw format_error(oft::detail::message("oft: tensor '", code.name, "' is not bitsandbytes' ",
                                            quant::name(type),
                                            " code (a custom quant_map is not supported)"));

  const bool nested =
      s.contains("nested_offset") || source.contains(prefix + ".weight.nested_absmax");
  std::optional<quant::Bnb4NestedAbsmax> nested_absmax;
  if (nested) {
    const nlohmann::ordered_json& offset =
        member(s, "nested_offset", where + " (the layer has nested_absmax)");
    if (!offset.is_number())
      throw format_error("oft: " + where + " has nested_offset " + offset.dump() +
                         ", expected a number");
    quant::Bnb4NestedAbsmax n;
    n.offset = static_cast<float>(offset.get<double>());
    n.nested_blocksize =
        positive_integer(member(s, "nested_blocksize", where), where + " nested_blocksize");
    const TensorView q = need(source, prefix + ".weight.absmax", Dtype::U8,
                              "the doubly quantized absmax (the quant_state has nested_offset)");
    need_count(q, static_cast<std::uint64_t>(blocks),
               layer + " in blocks of " + std::to_string(blocksize));
    n.qabsmax = q.copy_as<std::uint8_t>();
    const TensorView scales =
        need(source, prefix + ".weight.nested_absmax", Dtype::F32, "double quantization");
    need_count(scales, static_cast<std::uint64_t>(quant::bnb4_blocks(blocks, n.nested_blocksize)),
               oft::detail::message(blocks, " absmax in nested blocks of ", n.nested_blocksize));
    n.nested_absmax = scales.copy_as<float>();
    const TensorView map =
        need(source, prefix + ".weight.nested_quant_map", Dtype::F32, "double quantization");
    need_count(map, 256, "an 8-bit code");
    const std::vector<float> values = map.copy_as<float>();
    std::copy(values.begin(), values.end(), n.code.begin());
    t.absmax = quant::dequantize_absmax(n);
    nested_absmax = std::move(n);
  } else {
    const TensorView absmax =
        need(source, prefix + ".weight.absmax", Dtype::F32, "the 4-bit absmax");
    need_count(absmax, static_cast<std::uint64_t>(blocks),
               layer + " in blocks of " + std::to_string(blocksize));
    t.absmax = absmax.copy_as<float>();
  }
  if (config.method == "bitsandbytes") {
    if (config.load_in_8bit && !config.load_in_4bit)
      throw format_error("oft: layer '" + prefix +
                         "' is 4-bit, quantization_config says load_in_8bit");
    if (!config.bnb_4bit_quant_type.empty() && config.bnb_4bit_quant_type != quant::name(type))
      throw format_error("oft: layer '" + prefix + "' is " + quant::name(type) +
                         ", quantization_config says bnb_4bit_quant_type \"" +
                         config.bnb_4bit_quant_type + "\"");
    if (config.bnb_4bit_use_double_quant && *config.bnb_4bit_use_double_quant != nested)
      throw format_error(std::string("oft: layer '") + prefix + "' is " + (nested ? "" : "not ") +
                         "doubly quantized, quantization_config says bnb_4bit_use_double_quant " +
                         (*config.bnb_4bit_use_double_quant ? "true" : "false"));
  }
  StoredLinear out(prefix, quant::Bnb4Base(std::move(t), rows, cols, dtype));
  out.nested = std::move(nested_absmax);
  out.quant_state = std::move(s);
  return out;
}

template <class Source>
StoredLinear read_int8(const Source& source, const std::string& prefix,
                       const QuantizationConfig& config) {
  const TensorView w =
      need(source, prefix + ".weight", Dtype::I8, "the LLM.int8 weight (the layer has SCB)");
  if (w.shape.size() != 2 || w.shape[0] == 0 || w.shape[1] == 0)
    throw format_error("oft: tensor '" + w.name + "' has shape " + shape_text(w) +
                       ", expected [out, in]");
  const TensorView scb = need(source, prefix + ".SCB", Dtype::F32, "the LLM.int8 row scales");
  need_count(scb, w.shape[0], "one scale per row of " + w.name + " " + shape_text(w));
  if (source.contains(prefix + ".weight_format")) {
    const TensorView f = need(source, prefix + ".weight_format", Dtype::U8, "the LLM.int8 layout");
    need_count(f, 1, "a layout byte");
    const auto value = static_cast<unsigned>(static_cast<std::uint8_t>(f.data[0]));
    if (value != 0)
      throw format_error(oft::detail::message("oft: tensor '", f.name, "' is ", value,
                                              "; only 0 (row-major int8) is a stored layout"));
  }
  if (config.method == "bitsandbytes" && config.load_in_4bit)
    throw format_error("oft: layer '" + prefix +
                       "' is LLM.int8, quantization_config says load_in_4bit");
  quant::Int8Tensor t;
  t.rows = static_cast<Index>(w.shape[0]);
  t.cols = static_cast<Index>(w.shape[1]);
  t.values = w.copy_as<std::int8_t>();
  t.scales = scb.copy_as<float>();
  return StoredLinear(prefix, quant::Int8Base(std::move(t)));  // Int8Base checks sizes and scales
}

template <class Source>
quant::Int4Array<std::int32_t> int32_array(const Source& source, const std::string& name,
                                           const std::string& why) {
  const TensorView v = need(source, name, Dtype::I32, why);
  if (v.shape.size() != 2)
    throw format_error("oft: tensor '" + name + "' has shape " + shape_text(v) +
                       ", expected 2 dimensions");
  return {static_cast<Index>(v.shape[0]), static_cast<Index>(v.shape[1]),
          v.copy_as<std::int32_t>()};
}

template <class Source>
StoredLinear read_int4(const Source& source, const std::string& prefix,
                       const QuantizationConfig& config) {
  const std::string why = "a GPTQ/AWQ int4 layer";
  if (config.method != "gptq" && config.method != "awq")
    throw format_error("oft: layer '" + prefix + "' has a qweight (GPTQ or AWQ int4), but " +
                       (config.method.empty() ? std::string("no quantization_config says which")
                                              : "quantization_config says quant_method "
                                                " + config.method + "
                                                "") +
                       ": pass the model's config.json (quant_method gptq or awq)");
  if (config.bits.value_or(4) != 4)
    throw format_error(oft::detail::message("oft: quantization_config says bits ", *config.bits,
                                            "; oft reads 4-bit GPTQ/AWQ only"));
  if (!config.group_size)
    throw format_error("oft: quantization_config has no group_size (needed to read layer '" +
                       prefix + "')");
  quant::Int4GroupTensor t;
  if (config.method == "gptq") {
    const std::string format = config.checkpoint_format.empty() ? "gptq" : config.checkpoint_format;
    if (format != "gptq" && format != "gptq_v2")
      throw format_error("oft: quantization_config says checkpoint_format \"" + format +
                         "\"; oft reads \"gptq\" (zeros stored minus one) and \"gptq_v2\"");
    t.layout = format == "gptq" ? quant::Int4Layout::GptqV1 : quant::Int4Layout::GptqV2;
  } else {
    const std::string version = config.version.empty() ? "gemm" : config.version;
    if (version != "gemm")
      throw format_error("oft: quantization_config says AWQ version \"" + version +
                         "\"; oft reads \"gemm\"");
    if (config.zero_point && !*config.zero_point)
      throw format_error(
          "oft: quantization_config says zero_point false; oft reads AWQ with zero points");
    t.layout = quant::Int4Layout::Awq;
  }
  t.qweight = int32_array(source, prefix + ".qweight", why);
  t.qzeros = int32_array(source, prefix + ".qzeros", why);
  const TensorView scales = need(source, prefix + ".scales", Dtype::F16, why);
  if (scales.shape.size() != 2)
    throw format_error("oft: tensor '" + scales.name + "' has shape " + shape_text(scales) +
                       ", expected [groups, out]");
  std::vector<std::uint16_t> scale_bits(scales.bytes / 2);  // float16 bits, any alignment
  if (!scale_bits.empty()) std::memcpy(scale_bits.data(), scales.data, scales.bytes);
  t.scales = {static_cast<Index>(scales.shape[0]), static_cast<Index>(scales.shape[1]),
              std::move(scale_bits)};
  t.out = t.scales.cols;
  t.in = quant::is_gptq(t.layout) ? t.qweight.rows * 8 : t.qweight.rows;
  t.group_size = static_cast<Index>(*config.group_size);
  if (quant::is_gptq(t.layout)) {
    if (source.contains(prefix + ".g_idx")) {
      const TensorView g = need(source, prefix + ".g_idx", Dtype::I32, why);
      t.g_idx = g.copy_as<std::int32_t>();
      if (g.shape.size() != 1)
        throw format_error("oft: tensor '" + g.name + "' has shape " + shape_text(g) +
                           ", expected [in]");
    } else if (t.group_size == -1 || (t.group_size >= 1 && t.in % t.group_size == 0)) {
      t.g_idx = quant::gptq_sequential_g_idx(t.in, t.group_size);
    }
  }
  try {
    return StoredLinear(prefix, quant::Int4GroupBase(t));
  } catch (const std::domain_error& e) {
    throw format_error("oft: layer '" + prefix + "': " + e.what());
  } catch (const std::invalid_argument& e) {
    throw format_error("oft: layer '" + prefix + "': " + e.what());
  }
}

template <class Source>
StoredLinear read_dense(const Source& source, const std::string& prefix) {
  if (!source.contains(prefix + ".weight"))
    throw format_error("oft: the checkpoint has no tensor '" + prefix + ".weight'");
  const TensorView w = source.tensor(prefix + ".weight");
  if (w.dtype != Dtype::F32 && w.dtype != Dtype::F16 && w.dtype != Dtype::BF16)
    throw format_error(oft::detail::message("oft: tensor '", w.name, "' is ", dtype_name(w.dtype),
                                            " and the layer has no quant_state or SCB: not a float "
                                            "weight and not a quantization oft reads"));
  if (w.shape.size() != 2 || w.shape[0] == 0 || w.shape[1] == 0)
    throw format_error("oft: tensor '" + w.name + "' has shape " + shape_text(w) +
                       ", expected [out, in]");
  const std::vector<float> values = w.to_floats();
  StoredLinear out(prefix, quant::DenseFloatBase(values.data(), static_cast<Index>(w.shape[0]),
                                            static_cast<Index>(w.shape[1])));
  out.dense_dtype = w.dtype;
  return out;
}

}  // namespace detail

/// Reads the frozen weight (and bias) of the linear layer at `prefix` from `source` (a
/// SafetensorsFile, a ShardedSafetensors, or anything with contains(name) and tensor(name)).
/// Throws format_error when the tensors are missing, malformed or disagree with each other or
/// with `config`.
template <class Source>
StoredLinear read_linear(const Source& source, const std::string& prefix,
                         const QuantizationConfig& config = {}) {
  using namespace detail;
  quant::Bnb4Type type = quant::Bnb4Type::NF4;
  const auto state = bnb4_state_key(source, prefix, &type);
  StoredLinear out = state ? read_bnb4(source, prefix, *state, type, config)
                     : source.contains(prefix + ".SCB")     ? read_int8(source, prefix, config)
                     : source.contains(prefix + ".qweight") ? read_int4(source, prefix, config)
                                                            : read_dense(source, prefix);
  if (source.contains(prefix + ".bias")) {
    const TensorView b = source.tensor(prefix + ".bias");
    need_count(b, static_cast<std::uint64_t>(out.rows()), "one bias per output row");
    out.bias = b.to_floats();
    out.bias_dtype = b.dtype;
  }
  return out;
}

/// Whether the layer whose weight is `prefix.weight` is stored by bitsandbytes: a 4-bit
/// quant_state (`prefix.weight.quant_state.bitsandbytes__nf4|fp4`) or LLM.int8's `prefix.SCB`
/// beside it, the keys read_linear reads. `source` is anything with contains(name).
template <class Source>
bool stored_by_bitsandbytes(const Source& source, const std::string& prefix) {
  if (source.contains(prefix + ".SCB")) return true;
  for (quant::Bnb4Type t : {quant::Bnb4Type::NF4, quant::Bnb4Type::FP4})
    if (source.contains(prefix + ".weight.quant_state.bitsandbytes__" + quant::name(t)))
      return true;
  return false;
}

/// A float weight (row-major rows x cols) quantized as bitsandbytes' Linear4bit stores it:
/// NF4/FP4 in blocks of `blocksize`, optionally with double quantization (oft's own offset, see
/// quant/bnb4_double.hpp), dequantizing to `dtype`. Its quant_state is the JSON bitsandbytes
/// writes.
inline StoredLinear make_bnb4_linear(std::string prefix, const std::vector<float>& weight,
                                     Index rows, Index cols, quant::Bnb4Type type,
                                     Index blocksize = 64, bool double_quant = true,
                                     quant::DequantDtype dtype = quant::DequantDtype::F32) {
  oft::detail::require(rows >= 1 && cols >= 1 && static_cast<Index>(weight.size()) == rows * cols,
                       "make_bnb4_linear: ", weight.size(), " values for a ", rows, "x", cols,
                       " layer");
  quant::Bnb4Tensor t = quant::quantize_bnb4(weight.data(), rows * cols, blocksize, type);
  nlohmann::ordered_json state;
  state["quant_type"] = quant::name(type);
  state["blocksize"] = blocksize;
  state["dtype"] = quant::name(dtype);
  state["shape"] = {rows, cols};
  std::optional<quant::Bnb4NestedAbsmax> nested;
  if (double_quant) {
    nested = quant::double_quantize_absmax(t.absmax);
    t.absmax = quant::dequantize_absmax(*nested);
    state["nested_blocksize"] = nested->nested_blocksize;
    state["nested_dtype"] = "float32";
    state["nested_offset"] = static_cast<double>(nested->offset);
  }
  StoredLinear out(std::move(prefix), quant::Bnb4Base(std::move(t), rows, cols, dtype));
  out.nested = std::move(nested);
  out.quant_state = std::move(state);
  return out;
}

/// A float weight quantized as bitsandbytes' Linear8bitLt stores it (LLM.int8 rows).
inline StoredLinear make_int8_linear(std::string prefix, const std::vector<float>& weight,
                                     Index rows, Index cols) {
  oft::detail::require(rows >= 1 && cols >= 1 && static_cast<Index>(weight.size()) == rows * cols,
                       "make_int8_linear: ", weight.size(), " values for a ", rows, "x", cols,
                       " layer");
  return StoredLinear(std::move(prefix),
                      quant::Int8Base(quant::quantize_int8(weight.data(), rows, cols)));
}

/// One tensor to store: what write_linear_tensors() gives for each key of a layer.
struct StoredTensor {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::uint64_t> shape;
  std::vector<std::byte> bytes;
};

namespace detail {

template <class T>
StoredTensor stored(std::string name, Dtype dtype, std::vector<std::uint64_t> shape,
                    const T* values, std::size_t count) {
  StoredTensor t{std::move(name), dtype, std::move(shape),
                 std::vector<std::byte>(count * sizeof(T))};
  if (count != 0) std::memcpy(t.bytes.data(), values, count * sizeof(T));
  return t;
}

inline StoredTensor stored_floats(std::string name, Dtype dtype, std::vector<std::uint64_t> shape,
                                  const std::vector<float>& values) {
  if (dtype == Dtype::F32)
    return stored(std::move(name), dtype, std::move(shape), values.data(), values.size());
  std::vector<std::uint16_t> half(values.size());
  for (std::size_t i = 0; i < values.size(); ++i)
    half[i] = dtype == Dtype::F16 ? float_to_f16(values[i]) : float_to_bf16(values[i]);
  return stored(std::move(name), dtype, std::move(shape), half.data(), half.size());
}

}  // namespace detail

/// The layer's weight tensors (not the bias, and not the keys a requantization leaves as they
/// were, such as weight_format), named and laid out as read_linear() reads them and as the
/// quantizing library writes them.
inline std::vector<StoredTensor> write_linear_tensors(const StoredLinear& layer) {
  using detail::stored;
  const std::string w = layer.prefix + ".weight";
  const auto rows = static_cast<std::uint64_t>(layer.rows()),
             cols = static_cast<std::uint64_t>(layer.cols());
  std::vector<StoredTensor> out;
  if (const auto* dense = std::get_if<quant::DenseFloatBase>(&layer.base)) {
    out.push_back(detail::stored_floats(w, layer.dense_dtype, {rows, cols},
                                        quant::dequantize_all<float>(*dense)));
  } else if (const auto* int8 = std::get_if<quant::Int8Base>(&layer.base)) {
    out.push_back(stored(w, Dtype::I8, {rows, cols}, int8->tensor().values.data(),
                         int8->tensor().values.size()));
    out.push_back(
        stored(layer.prefix + ".SCB", Dtype::F32, {rows}, int8->tensor().scales.data(), rows));
  } else if (const auto* int4 = std::get_if<quant::Int4GroupBase>(&layer.base)) {
    const quant::Int4GroupTensor t = int4->tensor();
    const auto shape = [](const auto& a) {
      return std::vector<std::uint64_t>{static_cast<std::uint64_t>(a.rows),
                                        static_cast<std::uint64_t>(a.cols)};
    };
    out.push_back(stored(layer.prefix + ".qweight", Dtype::I32, shape(t.qweight),
                         t.qweight.values.data(), t.qweight.values.size()));
    out.push_back(stored(layer.prefix + ".qzeros", Dtype::I32, shape(t.qzeros),
                         t.qzeros.values.data(), t.qzeros.values.size()));
    out.push_back(stored(layer.prefix + ".scales", Dtype::F16, shape(t.scales),
                         t.scales.values.data(), t.scales.values.size()));
    if (quant::is_gptq(t.layout))
      out.push_back(stored(layer.prefix + ".g_idx", Dtype::I32, {t.g_idx.size()}, t.g_idx.data(),
                           t.g_idx.size()));
  } else {
    const quant::Bnb4Base& b = std::get<quant::Bnb4Base>(layer.base);
    const quant::Bnb4Tensor& t = b.tensor();
    out.push_back(stored(w, Dtype::U8, {t.packed.size(), 1}, t.packed.data(), t.packed.size()));
    if (layer.nested) {
      const quant::Bnb4NestedAbsmax& n = *layer.nested;
      out.push_back(
          stored(w + ".absmax", Dtype::U8, {n.qabsmax.size()}, n.qabsmax.data(), n.qabsmax.size()));
      out.push_back(stored(w + ".nested_absmax", Dtype::F32, {n.nested_absmax.size()},
                           n.nested_absmax.data(), n.nested_absmax.size()));
      out.push_back(stored(w + ".nested_quant_map", Dtype::F32, {256}, n.code.data(), 256));
    } else {
      out.push_back(
          stored(w + ".absmax", Dtype::F32, {t.absmax.size()}, t.absmax.data(), t.absmax.size()));
    }
    const auto& code = quant::bnb4_code(t.type);
    out.push_back(stored(w + ".quant_map", Dtype::F32, {16}, code.data(), 16));
    const std::string json = layer.quant_state.dump();
    out.push_back(stored(w + ".quant_state.bitsandbytes__" + std::string(quant::name(t.type)),
                         Dtype::U8, {json.size()}, json.data(), json.size()));
  }
  return out;
}

/// `like` with its weight replaced by `weight` (float32, row-major, like's shape), quantized the
/// way `like` was: the same NF4/FP4 type, blocksize, dtype and double quantization (with a new
/// offset, the mean of the new absmax), LLM.int8 rows, or the same float dtype. The bias stays.
inline StoredLinear requantized_like(const StoredLinear& like, const std::vector<float>& weight) {
  oft::detail::require(static_cast<Index>(weight.size()) == like.rows() * like.cols(),
                       "requantized_like: ", weight.size(), " values for a ", like.rows(), "x",
                       like.cols(), " layer");
  for (std::size_t i = 0; i < weight.size(); ++i)
    oft::detail::require_domain(std::isfinite(weight[i]), "requantized_like: value ", i,
                                " of layer '", like.prefix, "' is not finite (", weight[i], ")");
  StoredLinear out = like;
  if (std::holds_alternative<quant::DenseFloatBase>(like.base)) {
    std::vector<float> rounded = weight;
    quant::detail::round_to(like.dense_dtype == Dtype::F16    ? quant::DequantDtype::F16
                                 : like.dense_dtype == Dtype::BF16 ? quant::DequantDtype::BF16
                                                                   : quant::DequantDtype::F32,
                                 rounded.data(), static_cast<Index>(rounded.size()));
    out.base = quant::DenseFloatBase(rounded.data(), like.rows(), like.cols());
  } else if (std::holds_alternative<quant::Int8Base>(like.base)) {
    out.base = quant::Int8Base(quant::quantize_int8(weight.data(), like.rows(), like.cols()));
  } else if (std::holds_alternative<quant::Int4GroupBase>(like.base)) {
    // GPTQ and AWQ choose their codes with calibration data (Hessians, activation scales) that a
    // checkpoint does not carry; a plain rounding would not be the format's quantizer.
    throw std::invalid_argument(
        "requantized_like: layer '" + like.prefix + "' is " + like.format() +
        " int4: GPTQ/AWQ quantize with calibration data a merge does not have; merge "
        "into the float weights, or keep the adapter unmerged");
  } else {
    const quant::Bnb4Base& b = std::get<quant::Bnb4Base>(like.base);
    quant::Bnb4Tensor t = quant::quantize_bnb4(weight.data(), like.rows() * like.cols(),
                                               b.tensor().blocksize, b.tensor().type);
    if (like.nested) {
      // The new absmax is compressed with bitsandbytes' dynamic code; a checkpoint that stored
      // another one would silently change code tables.
      oft::detail::require(
          like.nested->code == quant::kBnbDynamicCode, "requantized_like: layer '", like.prefix,
          "' stores a nested_quant_map that is not bitsandbytes' dynamic code; oft requantizes ",
          "only with that one");
      quant::Bnb4NestedAbsmax n =
          quant::double_quantize_absmax(t.absmax, std::nullopt, like.nested->nested_blocksize);
      t.absmax = quant::dequantize_absmax(n);
      out.quant_state["nested_offset"] = static_cast<double>(n.offset);
      out.nested = std::move(n);
    }
    out.base = quant::Bnb4Base(std::move(t), like.rows(), like.cols(), b.dtype());
  }
  return out;
}

}  // namespace oft::io
