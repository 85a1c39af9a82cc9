#pragma once
/// \file io/diffusion_merge.hpp
/// A LyCORIS / kohya sd-scripts / OneTrainer OFT adapter (one `.safetensors` file) folded into an
/// image-generation checkpoint: merge_diffusion(), the function behind `oft merge` when
/// `--adapter` is such a file. docs/merging.md has the user's view.
///
/// Bases:
///   - a diffusers model folder: `unet/`, `transformer/`, `text_encoder/`, `text_encoder_2/`,
///     `text_encoder_3/`, each with one `*.safetensors` file or a `*.safetensors.index.json` and
///     its shards; everything else of the folder (vae/, scheduler/, tokenizers,
///     model_index.json) is copied byte for byte. A component holding its weights in several
///     diffusers variants (`*.fp16.safetensors` beside the plain file) is merged in the one
///     `variant` names and the others are left out (DiffusionMergeOptions::variant). The output
///     is a folder, written whole or not at all (io/atomic_directory.hpp).
///   - a single-file checkpoint (one `.safetensors`): SD 1.5 / SD 2 (`model.diffusion_model.*`,
///     `cond_stage_model.transformer.*`), SDXL (`conditioner.embedders.0.transformer.*`, and
///     `conditioner.embedders.1.model.*`, OpenCLIP's layout with its fused `attn.in_proj_weight`),
///     SD3 (`text_encoders.{clip_l,clip_g,t5xxl}.transformer.*`) and FLUX as Black Forest Labs
///     saves it (`double_blocks.*`, `single_blocks.*`, with or without `model.diffusion_model.`).
///     The output is one file, written atomically (SafetensorsWriter::write).
///
/// Names: an adapter module is named after a module path with '.' replaced by '_' behind a
/// prefix that says which model it adapts (kohya's `networks/lora.py` LORA_PREFIX_UNET
/// "lora_unet", LORA_PREFIX_TEXT_ENCODER "lora_te", "lora_te1"/"lora_te2" for SDXL,
/// `networks/oft.py` "oft_unet"; LyCORIS's wrapper "lycoris"; OneTrainer writes kohya's names).
/// The candidate map is built from the base's own tensor names: every floating-point weight of
/// rank >= 2 whose name ends in `.weight` gives the key `<prefix>_<path with '.' as '_'>` for each
/// prefix its component accepts (table kComponentPrefixes below). In a single file the U-Net's
/// original (LDM) names are also offered under their diffusers names (`input_blocks.1.1.proj_in`
/// is kohya's `down_blocks_0_attentions_0_proj_in` for SD 1.5; SDXL's kohya names are the LDM
/// ones, offered as they are; a diffusers folder's unet/ offers its tensors' LDM names too), and
/// OpenCLIP's `resblocks.<i>.attn.in_proj_weight` offers its three row slices as
/// `text_model_encoder_layers_<i>_self_attn_{q,k,v}_proj`. A FLUX or SD3 single file offers its
/// tensors under diffusers' transformer names too, fused ones as row slices (mmdit_to_diffusers:
/// `double_blocks.0.img_attn.qkv` is `transformer_blocks_0_attn_to_{q,k,v}`,
/// `single_blocks.0.linear1` is `single_transformer_blocks_0_attn_to_{q,k,v}` and `_proj_mlp`,
/// under the transformer's prefixes `lora_transformer_`, `lycoris_`, `lora_unet_`). A module whose
/// name matches no key, or more than one tensor, is refused before anything is written, as is a
/// tensor two modules would both change, a shape the module does not fit, or a non-float target.
///
/// Math per target (rows [begin, begin + count) of the tensor seen as [out, in * kh * kw]):
///   LyCORIS, kohya (output side):  LycorisAdapter::merge(m, W, multiplier)
///   OneTrainer (input side):       OneTrainerAdapter::merge(m, W, Linear or Conv2d, strength)
/// `blend` s is each dialect's own multiplier: the linear blend s R + (1 - s) I that LyCORIS's
/// merge_to and ComfyUI-OFTv2 apply, not orthogonal unless s is 0 or 1. `strength` s keeps oft's
/// meaning (SPEC 8): R(s Q) with Q the module's effective skew matrix (after the LyCORIS / kohya
/// norm constraint, OneTrainer's scaling and clipping), through the dialect's own map Q -> R
/// (exact Cayley; OneTrainer's 5-term Neumann series or its CANS iteration). At s = 1 both are
/// the adapter itself (the same path, bit for bit). Both at once are refused.
///
/// Memory and safety as merge_model (io/model_merge.hpp, whose pieces this reuses: stream_file,
/// encode, the staging directory): every tensor is streamed through SafetensorsWriter's
/// deferred tensors and its pages of the mapped base released once written, so the resident
/// memory is about the largest tensor; every check runs before the first byte is written.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dialect.hpp"
#include "lycoris_adapter.hpp"
#include "model_merge.hpp"
#include "onetrainer_adapter.hpp"
#include "sharded.hpp"

namespace oft::io {

/// What merge_diffusion is asked to do.
struct DiffusionMergeOptions {
  std::string base;     ///< a diffusers model folder or a single-file checkpoint (.safetensors)
  std::string adapter;  ///< a LyCORIS, kohya or OneTrainer OFT adapter file
  std::string out;      ///< a folder (diffusers base) or a file (single-file base)
  std::optional<double> strength;  ///< R(s Q), orthogonal (oft's meaning)
  std::optional<double> blend;     ///< s R + (1 - s) I (the dialect's own multiplier)
  MergeDtype dtype = MergeDtype::Same;
  bool force = false;
  std::optional<Dialect> dialect;  ///< lycoris, kohya or onetrainer; detected when empty
  /// A diffusers folder whose components hold their weights in several variants (diffusers'
  /// `variant`: `diffusion_pytorch_model.fp16.safetensors` beside the plain file): the one to
  /// merge. Its files are written under their own names; the other variants' weights files are
  /// left out of the output (DiffusionMergeReport::dropped), since diffusers would load them
  /// without the adapter. A component without this variant merges its plain weights, as
  /// diffusers loads them. Without it, several variants in a component are refused.
  std::optional<std::string> variant;
};

/// One adapter module placed in the base.
struct DiffusionTarget {
  std::string module;  ///< the adapter's module name
  std::string tensor;  ///< the base tensor (component-qualified in a folder: `unet/<name>`)
  std::uint64_t row_begin = 0, row_count = 0;  ///< the rows it changes (a fused qkv: a slice)
  /// The module was trained on this tensor with its two row halves swapped (diffusers'
  /// norm_out.linear of a FLUX or SD3 single file): merged in that order, stored back in this one.
  bool swap_halves = false;
};

/// What merge_diffusion wrote.
struct DiffusionMergeReport {
  Dialect dialect = Dialect::Lycoris;
  std::vector<DiffusionTarget> targets;  ///< in adapter module order
  std::size_t tensors = 0;               ///< tensors written
  std::size_t files = 0;                 ///< safetensors files written
  std::size_t other_files = 0;           ///< files copied unchanged
  /// With a variant: the other variants' weights files of the merged components, not written
  /// (relative to the base, as `unet/diffusion_pytorch_model.safetensors`).
  std::vector<std::string> dropped;
  std::uint64_t bytes = 0;
  /// With `blend` s: max over modules of ||M^T M - I||_2, M = s R + (1 - s) I (per block; per
  /// stage for BOFT); 0 otherwise. What the blend costs in orthogonality.
  double blend_orthogonality_error = 0.0;
};

namespace detail {

/// A base component: the diffusers subfolder (or the single file's part) and the prefixes of the
/// adapter module names that adapt it.
struct ComponentPrefixes {
  const char* folder;
  std::array<const char*, 6> prefixes;  // nullptr-terminated
};

/// kohya's prefixes (sd-scripts networks/lora.py, networks/oft.py, library/sd3_models and
/// networks/lora_flux.py name FLUX's transformer "lora_unet" too), LyCORIS's default "lycoris"
/// (whatever module it wrapped: any component), diffusers' own "lora_transformer".
inline constexpr std::array<ComponentPrefixes, 5> kComponentPrefixes{{
    {"unet", {"lora_unet_", "oft_unet_", "lycoris_", nullptr, nullptr, nullptr}},
    {"transformer", {"lora_unet_", "oft_unet_", "lora_transformer_", "lycoris_", nullptr, nullptr}},
    {"text_encoder", {"lora_te_", "lora_te1_", "oft_te_", "oft_te1_", "lycoris_", nullptr}},
    {"text_encoder_2", {"lora_te2_", "oft_te2_", "lycoris_", nullptr, nullptr, nullptr}},
    {"text_encoder_3", {"lora_te3_", "oft_te3_", "lycoris_", nullptr, nullptr, nullptr}},
}};

inline const ComponentPrefixes& component_prefixes(const std::string& folder) {
  for (const ComponentPrefixes& c : kComponentPrefixes)
    if (folder == c.folder) return c;
  throw std::logic_error("oft: no component '" + folder + "'");
}

inline std::string underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

inline bool starts_with(const std::string& s, const std::string& head) {
  return s.rfind(head, 0) == 0;
}

/// Splits the leading "<number>." off `s` (false when it does not start so).
inline bool take_number(std::string& s, int& n) {
  const std::size_t dot = s.find('.');
  if (dot == 0 || dot == std::string::npos || dot > 4 ||
      s.substr(0, dot).find_first_not_of("0123456789") != std::string::npos)
    return false;
  n = std::stoi(s.substr(0, dot));
  s = s.substr(dot + 1);
  return true;
}

/// The diffusers name of a ResNet block's inner tensor, from the LDM (original Stable Diffusion)
/// layout (diffusers' convert_from_ckpt renames these five).
inline std::string ldm_resnet(const std::string& rest) {
  static const std::array<std::pair<const char*, const char*>, 6> renames{{
      {"in_layers.0.", "norm1."},
      {"in_layers.2.", "conv1."},
      {"emb_layers.1.", "time_emb_proj."},
      {"out_layers.0.", "norm2."},
      {"out_layers.3.", "conv2."},
      {"skip_connection.", "conv_shortcut."},
  }};
  for (const auto& [from, to] : renames)
    if (starts_with(rest, from)) return to + rest.substr(std::strlen(from));
  return rest;
}

/// The diffusers UNet2DConditionModel name of an LDM U-Net tensor (relative to
/// `model.diffusion_model.`), for the layouts with two ResNets per down level and three per up
/// level (SD 1.x, SD 2.x, SDXL); "" when the name has no diffusers counterpart known here.
inline std::string ldm_unet_to_diffusers(const std::string& name) {
  static const std::array<std::pair<const char*, const char*>, 8> renames{{
      {"time_embed.0.", "time_embedding.linear_1."},
      {"time_embed.2.", "time_embedding.linear_2."},
      {"label_emb.0.0.", "add_embedding.linear_1."},
      {"label_emb.0.2.", "add_embedding.linear_2."},
      {"input_blocks.0.0.", "conv_in."},
      {"middle_block.1.", "mid_block.attentions.0."},
      {"out.0.", "conv_norm_out."},
      {"out.2.", "conv_out."},
  }};
  for (const auto& [from, to] : renames)
    if (starts_with(name, from)) return to + name.substr(std::strlen(from));
  if (starts_with(name, "middle_block.0."))
    return "mid_block.resnets.0." + ldm_resnet(name.substr(std::strlen("middle_block.0.")));
  if (starts_with(name, "middle_block.2."))
    return "mid_block.resnets.1." + ldm_resnet(name.substr(std::strlen("middle_block.2.")));
  int block = 0, layer = 0;
  std::string rest;
  if (starts_with(name, "input_blocks.")) {
    rest = name.substr(std::strlen("input_blocks."));
    if (!take_number(rest, block) || !take_number(rest, layer) || block < 1) return {};
    const int level = (block - 1) / 3, index = (block - 1) % 3;
    const std::string down = "down_blocks." + std::to_string(level) + ".";
    if (index == 2)  // input_blocks.3.0.op: the level's downsampler
      return starts_with(rest, "op.") ? down + "downsamplers.0.conv." + rest.substr(3)
                                      : std::string();
    if (layer == 0) return down + "resnets." + std::to_string(index) + "." + ldm_resnet(rest);
    if (layer == 1) return down + "attentions." + std::to_string(index) + "." + rest;
    return {};
  }
  if (starts_with(name, "output_blocks.")) {
    rest = name.substr(std::strlen("output_blocks."));
    if (!take_number(rest, block) || !take_number(rest, layer)) return {};
    const std::string up = "up_blocks." + std::to_string(block / 3) + ".";
    const std::string index = std::to_string(block % 3);
    if (layer == 0) return up + "resnets." + index + "." + ldm_resnet(rest);
    // The upsampler is the last layer of every third block: .1.conv without attention, .2.conv
    // with it; an attention is never called "conv".
    if (starts_with(rest, "conv.")) return up + "upsamplers.0." + rest;
    if (layer == 1) return up + "attentions." + index + "." + rest;
    return {};
  }
  return {};
}

/// The LDM name of a diffusers UNet2DConditionModel tensor: the inverse of
/// ldm_unet_to_diffusers, for a diffusers folder merged with kohya's SDXL names (which are the
/// LDM ones). `up_attention(i)`: whether up block i has attentions (its upsampler is then the
/// block's third layer). "" when the name has no LDM counterpart known here; every name given
/// is checked to map back (the forward function is the definition).
template <class HasAttention>
std::string diffusers_unet_to_ldm(const std::string& name, const HasAttention& up_attention) {
  static const std::array<std::pair<const char*, const char*>, 8> renames{{
      {"time_embedding.linear_1.", "time_embed.0."},
      {"time_embedding.linear_2.", "time_embed.2."},
      {"add_embedding.linear_1.", "label_emb.0.0."},
      {"add_embedding.linear_2.", "label_emb.0.2."},
      {"conv_in.", "input_blocks.0.0."},
      {"mid_block.attentions.0.", "middle_block.1."},
      {"conv_norm_out.", "out.0."},
      {"conv_out.", "out.2."},
  }};
  static const std::array<std::pair<const char*, const char*>, 6> resnet{{
      {"norm1.", "in_layers.0."},
      {"conv1.", "in_layers.2."},
      {"time_emb_proj.", "emb_layers.1."},
      {"norm2.", "out_layers.0."},
      {"conv2.", "out_layers.3."},
      {"conv_shortcut.", "skip_connection."},
  }};
  const auto inner = [&](const std::string& rest) {
    for (const auto& [from, to] : resnet)
      if (starts_with(rest, from)) return to + rest.substr(std::strlen(from));
    return rest;
  };
  std::string ldm;
  std::string rest;
  int block = 0, index = 0;
  for (const auto& [from, to] : renames)
    if (starts_with(name, from)) ldm = to + name.substr(std::strlen(from));
  if (!ldm.empty()) {
    // a fixed rename
  } else if (starts_with(name, "mid_block.resnets.")) {
    rest = name.substr(std::strlen("mid_block.resnets."));
    if (take_number(rest, index) && index <= 1)
      ldm = "middle_block." + std::to_string(2 * index) + "." + inner(rest);
  } else if (starts_with(name, "down_blocks.") || starts_with(name, "up_blocks.")) {
    const bool down = starts_with(name, "down_blocks.");
    rest = name.substr(std::strlen(down ? "down_blocks." : "up_blocks."));
    if (!take_number(rest, block)) return {};
    const std::string head = down ? "input_blocks." : "output_blocks.";
    const auto number = [&](int n) { return std::to_string(n); };
    if (starts_with(rest, "resnets.") || starts_with(rest, "attentions.")) {
      const bool attention = starts_with(rest, "attentions.");
      rest = rest.substr(std::strlen(attention ? "attentions." : "resnets."));
      if (!take_number(rest, index)) return {};
      const int n = down ? 3 * block + index + 1 : 3 * block + index;
      ldm = head + number(n) + (attention ? ".1." + rest : ".0." + inner(rest));
    } else if (down && starts_with(rest, "downsamplers.0.conv.")) {
      ldm = head + number(3 * block + 3) + ".0.op." +
            rest.substr(std::strlen("downsamplers.0.conv."));
    } else if (!down && starts_with(rest, "upsamplers.0.conv.")) {
      ldm = head + number(3 * block + 2) + (up_attention(block) ? ".2." : ".1.") +
            rest.substr(std::strlen("upsamplers.0."));
    }
  }
  return !ldm.empty() && ldm_unet_to_diffusers(ldm) == name ? ldm : std::string();
}

/// OpenCLIP's text transformer (SDXL's second encoder, `conditioner.embedders.1.model.`) under
/// the Hugging Face CLIPTextModel names kohya uses for it. in_proj_weight gives three slices.
struct OpenClipName {
  std::string name;         ///< the HF path without `.weight`
  std::uint64_t slice = 0;  ///< which third of in_proj_weight (q, k, v); 0 otherwise
  bool sliced = false;
};

inline std::vector<OpenClipName> open_clip_to_hf(std::string name) {
  if (!starts_with(name, "transformer.resblocks.")) return {};
  std::string rest = name.substr(std::strlen("transformer.resblocks."));
  int layer = 0;
  if (!take_number(rest, layer)) return {};
  const std::string head = "text_model.encoder.layers." + std::to_string(layer) + ".";
  if (rest == "attn.in_proj_weight")
    return {{head + "self_attn.q_proj", 0, true},
            {head + "self_attn.k_proj", 1, true},
            {head + "self_attn.v_proj", 2, true}};
  if (rest == "attn.out_proj.weight") return {{head + "self_attn.out_proj", 0, false}};
  if (rest == "mlp.c_fc.weight") return {{head + "mlp.fc1", 0, false}};
  if (rest == "mlp.c_proj.weight") return {{head + "mlp.fc2", 0, false}};
  return {};
}

/// Which MMDiT a single file holds, told by its tensor names: FLUX as Black Forest Labs saves it
/// (`double_blocks.*`, `single_blocks.*`) or SD3 (`joint_blocks.*`), each with or without
/// `model.diffusion_model.`. Its tensors are then also offered under the names of diffusers'
/// FluxTransformer2DModel / SD3Transformer2DModel (mmdit_to_diffusers), which is how LyCORIS,
/// SimpleTuner and diffusers-style kohya / OneTrainer files name the transformer they trained.
struct TransformerLayout {
  enum class Kind { None, Flux, Sd3 };
  Kind kind = Kind::None;
  int last_joint_block = -1;  ///< SD3: the last joint block, whose context stream ends there
};

/// `name` relative to the transformer (ComfyUI writes FLUX under `model.diffusion_model.` too).
inline std::string mmdit_relative(const std::string& name) {
  static const std::string head = "model.diffusion_model.";
  return starts_with(name, head) ? name.substr(head.size()) : name;
}

inline TransformerLayout transformer_layout(const std::vector<std::string>& names) {
  bool flux = false, sd3 = false;
  TransformerLayout layout;
  for (const std::string& name : names) {
    std::string rest = mmdit_relative(name);
    flux = flux || starts_with(rest, "double_blocks.") || starts_with(rest, "single_blocks.");
    if (!starts_with(rest, "joint_blocks.")) continue;
    sd3 = true;
    rest = rest.substr(std::strlen("joint_blocks."));
    int block = 0;
    if (take_number(rest, block))
      layout.last_joint_block = std::max(layout.last_joint_block, block);
  }
  // Both at once is no model diffusers converts: offer neither's names rather than guess.
  if (flux != sd3)
    layout.kind = flux ? TransformerLayout::Kind::Flux : TransformerLayout::Kind::Sd3;
  return layout;
}

/// One diffusers module an MMDiT tensor holds: rows [begin, begin + count) of it (count 0: all).
struct DiffusersPiece {
  std::string name;  ///< the diffusers module path (no `.weight`)
  std::uint64_t begin = 0, count = 0;
  /// diffusers' tensor is this one with its two row halves swapped (swap_scale_shift: the
  /// original AdaLayerNormContinuous splits its output into shift, scale; diffusers' into scale,
  /// shift), so a module merges into the swapped tensor and is swapped back.
  bool swap_halves = false;
  std::string refused;  ///< non-empty: the name is this tensor's, but its shape does not split so
};

/// The diffusers names of the single-file MMDiT tensor `path` (relative to the transformer,
/// without `.weight`; rows x cols with the trailing dimensions flattened). The renaming and the
/// row splits are those of diffusers' own converters, src/diffusers/loaders/single_file_utils.py
/// convert_flux_transformer_checkpoint_to_diffusers and
/// convert_sd3_transformer_checkpoint_to_diffusers (huggingface/diffusers at commit
/// 58eb52c0803ea9af3abec60841c2a093bdf1f951; scripts/convert_flux_to_diffusers.py at commit
/// 1b446eb710c5d5f7cd4c7296ac151f722ff01454 splits the same way): a fused q, k, v is chunked into
/// three equal row blocks in that order (the context stream's are add_q_proj, add_k_proj,
/// add_v_proj); FLUX's single-block linear1 is split into q, k, v of `inner_dim` rows each and
/// proj_mlp of `mlp_ratio` (4) x inner_dim, inner_dim being its input width; the final norm (and
/// SD3's last context norm) swaps its halves. Every other tensor is one diffusers module whole.
inline std::vector<DiffusersPiece> mmdit_to_diffusers(const std::string& path, std::uint64_t rows,
                                                      std::uint64_t cols,
                                                      const TransformerLayout& layout) {
  using Kind = TransformerLayout::Kind;
  // How diffusers cuts the tensor: whole, q|k|v thirds, FLUX's q|k|v|mlp, halves swapped, or
  // SD3's context norm (swapped in the last block only).
  enum class Cut { Whole, Thirds, QkvMlp, Swapped, SwappedInLastBlock };
  struct Rename {
    const char* from;  // relative to its block (top level: to the transformer), no `.weight`
    Cut cut;
    std::array<const char*, 4> to;
  };
  static const std::array<Rename, 10> flux_top{{
      {"time_in.in_layer", Cut::Whole, {"time_text_embed.timestep_embedder.linear_1"}},
      {"time_in.out_layer", Cut::Whole, {"time_text_embed.timestep_embedder.linear_2"}},
      {"vector_in.in_layer", Cut::Whole, {"time_text_embed.text_embedder.linear_1"}},
      {"vector_in.out_layer", Cut::Whole, {"time_text_embed.text_embedder.linear_2"}},
      {"guidance_in.in_layer", Cut::Whole, {"time_text_embed.guidance_embedder.linear_1"}},
      {"guidance_in.out_layer", Cut::Whole, {"time_text_embed.guidance_embedder.linear_2"}},
      {"txt_in", Cut::Whole, {"context_embedder"}},
      {"img_in", Cut::Whole, {"x_embedder"}},
      {"final_layer.linear", Cut::Whole, {"proj_out"}},
      {"final_layer.adaLN_modulation.1", Cut::Swapped, {"norm_out.linear"}},
  }};
  static const std::array<Rename, 10> flux_double{{
      {"img_attn.qkv", Cut::Thirds, {"attn.to_q", "attn.to_k", "attn.to_v"}},
      {"txt_attn.qkv", Cut::Thirds, {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"}},
      {"img_attn.proj", Cut::Whole, {"attn.to_out.0"}},
      {"txt_attn.proj", Cut::Whole, {"attn.to_add_out"}},
      {"img_mlp.0", Cut::Whole, {"ff.net.0.proj"}},
      {"img_mlp.2", Cut::Whole, {"ff.net.2"}},
      {"txt_mlp.0", Cut::Whole, {"ff_context.net.0.proj"}},
      {"txt_mlp.2", Cut::Whole, {"ff_context.net.2"}},
      {"img_mod.lin", Cut::Whole, {"norm1.linear"}},
      {"txt_mod.lin", Cut::Whole, {"norm1_context.linear"}},
  }};
  static const std::array<Rename, 3> flux_single{{
      {"linear1", Cut::QkvMlp, {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"}},
      {"linear2", Cut::Whole, {"proj_out"}},
      {"modulation.lin", Cut::Whole, {"norm.linear"}},
  }};
  static const std::array<Rename, 8> sd3_top{{
      {"x_embedder.proj", Cut::Whole, {"pos_embed.proj"}},
      {"t_embedder.mlp.0", Cut::Whole, {"time_text_embed.timestep_embedder.linear_1"}},
      {"t_embedder.mlp.2", Cut::Whole, {"time_text_embed.timestep_embedder.linear_2"}},
      {"y_embedder.mlp.0", Cut::Whole, {"time_text_embed.text_embedder.linear_1"}},
      {"y_embedder.mlp.2", Cut::Whole, {"time_text_embed.text_embedder.linear_2"}},
      {"context_embedder", Cut::Whole, {"context_embedder"}},
      {"final_layer.linear", Cut::Whole, {"proj_out"}},
      {"final_layer.adaLN_modulation.1", Cut::Swapped, {"norm_out.linear"}},
  }};
  static const std::array<Rename, 12> sd3_joint{{
      {"x_block.attn.qkv", Cut::Thirds, {"attn.to_q", "attn.to_k", "attn.to_v"}},
      {"context_block.attn.qkv",
       Cut::Thirds,
       {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"}},
      {"x_block.attn2.qkv", Cut::Thirds, {"attn2.to_q", "attn2.to_k", "attn2.to_v"}},
      {"x_block.attn.proj", Cut::Whole, {"attn.to_out.0"}},
      {"x_block.attn2.proj", Cut::Whole, {"attn2.to_out.0"}},
      {"context_block.attn.proj", Cut::Whole, {"attn.to_add_out"}},
      {"x_block.mlp.fc1", Cut::Whole, {"ff.net.0.proj"}},
      {"x_block.mlp.fc2", Cut::Whole, {"ff.net.2"}},
      {"context_block.mlp.fc1", Cut::Whole, {"ff_context.net.0.proj"}},
      {"context_block.mlp.fc2", Cut::Whole, {"ff_context.net.2"}},
      {"x_block.adaLN_modulation.1", Cut::Whole, {"norm1.linear"}},
      {"context_block.adaLN_modulation.1", Cut::SwappedInLastBlock, {"norm1_context.linear"}},
  }};

  std::string rest = path, head;  // head: the diffusers block path
  int block = -1;
  const Rename* begin = nullptr;
  const Rename* end = nullptr;
  const auto in_block = [&](const char* bfl, const char* diffusers) {
    if (!starts_with(rest, bfl)) return false;
    rest = rest.substr(std::strlen(bfl));
    if (!take_number(rest, block)) return false;
    head = diffusers + std::to_string(block) + ".";
    return true;
  };
  if (layout.kind == Kind::Flux) {
    if (in_block("double_blocks.", "transformer_blocks.")) {
      begin = flux_double.data(), end = begin + flux_double.size();
    } else if (in_block("single_blocks.", "single_transformer_blocks.")) {
      begin = flux_single.data(), end = begin + flux_single.size();
    } else {
      begin = flux_top.data(), end = begin + flux_top.size();
    }
  } else if (layout.kind == Kind::Sd3) {
    if (in_block("joint_blocks.", "transformer_blocks.")) {
      begin = sd3_joint.data(), end = begin + sd3_joint.size();
    } else {
      begin = sd3_top.data(), end = begin + sd3_top.size();
    }
  }
  const Rename* found = nullptr;
  for (const Rename* r = begin; r != end; ++r)
    if (rest == r->from) found = r;
  if (found == nullptr) return {};

  const std::string model = layout.kind == Kind::Flux ? "FLUX" : "SD3";
  const auto shape = [&] { return std::to_string(rows) + "x" + std::to_string(cols); };
  std::vector<DiffusersPiece> pieces;
  switch (found->cut) {
    case Cut::Whole:
      pieces.push_back({head + found->to[0], 0, 0, false, {}});
      break;
    case Cut::Swapped:
    case Cut::SwappedInLastBlock: {
      const bool swapped = found->cut == Cut::Swapped || block == layout.last_joint_block;
      DiffusersPiece piece{head + found->to[0], 0, 0, swapped, {}};
      if (swapped && rows % 2 != 0)
        piece.refused = "this " + model + " norm has " + std::to_string(rows) +
                        " rows, which diffusers' swap of its shift and scale halves cannot split";
      pieces.push_back(piece);
      break;
    }
    case Cut::Thirds:
    case Cut::QkvMlp: {
      // Each of q, k, v is square (inner_dim = the input width); FLUX's MLP has mlp_ratio 4.
      const bool mlp = found->cut == Cut::QkvMlp;
      const std::uint64_t parts = mlp ? 4 : 3, want = mlp ? 7 * cols : 3 * cols;
      for (std::uint64_t p = 0; p < parts; ++p) {
        DiffusersPiece piece{head + found->to[p], p * cols, p == 3 ? 4 * cols : cols, false, {}};
        if (rows != want)
          piece.refused =
              model + " fuses " +
              (mlp ? std::string("q, k, v (inner_dim rows each) and the 4 x inner_dim MLP rows")
                   : std::string("q, k, v (inner_dim rows each)")) +
              " of inner_dim = its input width, so it has " + std::to_string(want / cols) + " x " +
              std::to_string(cols) + " = " + std::to_string(want) + " rows; this one is " +
              shape() + ", which does not split as diffusers splits it";
        pieces.push_back(piece);
      }
      break;
    }
  }
  return pieces;
}

/// One base tensor an adapter module name can mean.
struct Candidate {
  std::string tensor;  ///< qualified: "<component>/<name>" in a folder, the name in a file
  std::uint64_t row_begin = 0, row_count = 0;  ///< row_count 0: all rows
  bool swap_halves = false;                    ///< see DiffusersPiece
  std::string refused;  ///< non-empty: why this name's tensor cannot take the module
};

using CandidateMap = std::map<std::string, std::vector<Candidate>>;

inline void offer(CandidateMap& map, const char* component, const std::string& path,
                  const Candidate& candidate) {
  for (const char* prefix : component_prefixes(component).prefixes) {
    if (prefix == nullptr) break;
    std::vector<Candidate>& list = map[prefix + underscored(path)];
    // One tensor offered twice under one key (an LDM name equal to its own diffusers name)
    // is one candidate.
    const bool seen = std::any_of(list.begin(), list.end(), [&](const Candidate& c) {
      return c.tensor == candidate.tensor && c.row_begin == candidate.row_begin &&
             c.row_count == candidate.row_count && c.swap_halves == candidate.swap_halves;
    });
    if (!seen) list.push_back(candidate);
  }
}

inline bool adaptable(const TensorInfo& info) {
  return info.shape.size() >= 2 &&
         (info.dtype == Dtype::F32 || info.dtype == Dtype::F16 || info.dtype == Dtype::BF16);
}

/// The keys a single file's tensor `name` offers (see the file comment); `layout` is the file's
/// (transformer_layout).
inline void offer_single_file(CandidateMap& map, const TensorInfo& info,
                              const TransformerLayout& layout) {
  const std::string& name = info.name;
  const Candidate whole{name, 0, 0, false, {}};
  static const std::array<std::pair<const char*, const char*>, 6> encoders{{
      {"cond_stage_model.transformer.", "text_encoder"},         // SD 1.x (HF CLIP inside)
      {"conditioner.embedders.0.transformer.", "text_encoder"},  // SDXL's CLIP-L
      {"text_encoders.clip_l.transformer.", "text_encoder"},     // SD3
      {"text_encoders.clip_g.transformer.", "text_encoder_2"},
      {"text_encoders.t5xxl.transformer.", "text_encoder_3"},
      {"cond_stage_model.model.", "text_encoder"},  // SD 2.x (OpenCLIP as the only encoder)
  }};
  for (const auto& [head, component] : encoders)
    if (starts_with(name, head)) {
      const std::string rest = name.substr(std::strlen(head));
      if (std::string(head) == "cond_stage_model.model.") {
        for (const OpenClipName& o : open_clip_to_hf(rest))
          offer(map, component, o.name,
                o.sliced
                    ? Candidate{name, o.slice * info.shape[0] / 3, info.shape[0] / 3, false, {}}
                    : whole);
        return;
      }
      if (detail::ends_with(rest, ".weight"))
        offer(map, component, rest.substr(0, rest.size() - 7), whole);
      return;
    }
  if (starts_with(name, "conditioner.embedders.1.model.")) {
    const std::string rest = name.substr(std::strlen("conditioner.embedders.1.model."));
    for (const OpenClipName& o : open_clip_to_hf(rest))
      offer(map, "text_encoder_2", o.name,
            o.sliced ? Candidate{name, o.slice * info.shape[0] / 3, info.shape[0] / 3, false, {}}
                     : whole);
    return;
  }
  if (starts_with(name, "first_stage_model.") || starts_with(name, "vae.") ||
      !detail::ends_with(name, ".weight"))
    return;  // the VAE is not adapted by these trainers
  std::string path = name.substr(0, name.size() - 7);
  if (starts_with(path, "model.diffusion_model.")) {
    path = path.substr(std::strlen("model.diffusion_model."));
    const std::string diffusers = ldm_unet_to_diffusers(path + ".weight");
    if (!diffusers.empty()) offer(map, "unet", diffusers.substr(0, diffusers.size() - 7), whole);
  }
  offer(map, "unet", path, whole);  // LDM names (kohya SDXL), SD3 / FLUX names as they are
  std::uint64_t cols = 1;
  for (std::size_t d = 1; d < info.shape.size(); ++d) cols *= info.shape[d];
  for (const DiffusersPiece& p : mmdit_to_diffusers(path, info.shape[0], cols, layout))
    offer(map, "transformer", p.name, Candidate{name, p.begin, p.count, p.swap_halves, p.refused});
}

}  // namespace detail

namespace detail {

/// The variant of a weights file of a diffusers component folder, by diffusers' own names: ""
/// for none, std::nullopt when `name` is neither a `.safetensors` file nor an index. diffusers
/// puts the variant before the extension (src/diffusers/utils/hub_utils.py `_add_variant`:
/// `diffusion_pytorch_model.fp16.safetensors`, the index
/// `diffusion_pytorch_model.safetensors.index.fp16.json`, the shards
/// `diffusion_pytorch_model.fp16-00001-of-00002.safetensors`) and still reads the older
/// `...-00001-of-00002.fp16.safetensors` and `....safetensors.fp16.index.json`
/// (src/diffusers/pipelines/pipeline_loading_utils.py `variant_compatible_siblings`;
/// huggingface/diffusers at commit 58eb52c0803ea9af3abec60841c2a093bdf1f951).
inline std::optional<std::string> weights_variant(const std::string& name) {
  static const std::string extension = ".safetensors";
  if (detail::ends_with(name, extension)) {
    const std::string stem = name.substr(0, name.size() - extension.size());
    const std::size_t dot = stem.rfind('.');
    if (dot == std::string::npos) return std::string();  // a weights name has no dot of its own
    const std::string variant = stem.substr(dot + 1);
    return variant.substr(0, variant.find('-'));  // "fp16-00001-of-00002": a shard's number
  }
  const std::size_t at = name.find(extension + ".");
  if (at == std::string::npos || !detail::ends_with(name, ".json")) return std::nullopt;
  const std::size_t from = at + extension.size() + 1;
  const std::string middle = name.substr(from, name.size() - from - 5);
  if (middle == "index") return std::string();
  if (starts_with(middle, "index.")) return middle.substr(6);
  if (detail::ends_with(middle, ".index")) return middle.substr(0, middle.size() - 6);
  return std::nullopt;
}

/// A diffusers component folder opened like a model directory: a `*.safetensors.index.json`
/// (diffusers names it after the weights file) and its shards, or exactly one `.safetensors`,
/// of one variant (weights_variant): `variant`'s when given and present, else the plain one (as
/// diffusers loads a component that lacks the variant); the only one there when `variant` is
/// not given, and several are refused as ambiguous. The other variants' weights files are
/// added to `dropped` (names relative to the folder).
inline ModelDirectory open_component(const std::filesystem::path& folder,
                                     const std::optional<std::string>& variant,
                                     std::vector<std::string>& dropped) {
  namespace fs = std::filesystem;
  struct Files {
    std::vector<fs::path> indexes, files;
  };
  std::map<std::string, Files> variants;  // "" is the plain one
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = entry.path().filename().string();
    const std::optional<std::string> v = weights_variant(name);
    if (!v) continue;
    Files& files = variants[*v];
    (entry.path().extension() == ".safetensors" ? files.files : files.indexes)
        .push_back(entry.path());
  }
  const auto listed = [&] {
    std::string list;
    for (const auto& [v, files] : variants)
      list += (list.empty() ? "" : ", ") + (v.empty() ? std::string("plain") : "'" + v + "'");
    return list.empty() ? std::string("no weights files") : list;
  };
  std::string chosen;
  if (variant && variants.count(*variant) != 0) {
    chosen = *variant;
  } else if (variant && variants.count("") == 0) {
    throw std::invalid_argument(oft::detail::message(
        "oft: --variant ", *variant, ": base component '", folder.string(),
        "' has neither that variant's weights nor plain ones (it has ", listed(),
        "), so diffusers could not load it with variant='", *variant, "' either"));
  } else if (!variant && variants.size() > 1) {
    throw std::invalid_argument(
        oft::detail::message("oft: base component '", folder.string(), "' holds its weights in ",
                             variants.size(), " variants (", listed(),
                             "): pass --variant NAME to merge one of them (e.g. --variant fp16 for "
                             "*.fp16.safetensors), the others are then left out of the output"));
  } else if (!variant && variants.size() == 1) {
    chosen = variants.begin()->first;
  }
  for (const auto& [v, files] : variants)
    if (v != chosen)
      for (const auto* list : {&files.indexes, &files.files})
        for (const fs::path& path : *list) dropped.push_back(path.filename().string());
  const Files& files = variants[chosen];
  const std::vector<fs::path>& indexes = files.indexes;
  if (indexes.size() > 1 || (indexes.empty() && files.files.size() != 1))
    throw std::invalid_argument(oft::detail::message(
        "oft: base component '", folder.string(), "' has ", indexes.size(), " indexes and ",
        files.files.size(), " .safetensors files", chosen.empty() ? "" : " of variant '", chosen,
        chosen.empty() ? "" : "'", "; expected one file or one index"));
  ModelDirectory model;
  model.directory = folder;
  if (!indexes.empty()) {
    model.index_path = indexes.front();
    const ShardedSafetensors sharded = ShardedSafetensors::open(indexes.front());
    std::set<std::string> names;
    for (const auto& shard : sharded.shards())
      names.insert(fs::relative(shard.path(), folder).generic_string());
    model.file_names.assign(names.begin(), names.end());
  } else {
    model.file_names.push_back(files.files.front().filename().string());
  }
  for (const std::string& name : model.file_names)
    model.files.push_back(SafetensorsFile::open(folder / name));
  for (std::size_t f = 0; f < model.files.size(); ++f)
    for (const std::string& name : model.files[f].tensor_names()) model.where[name] = f;
  return model;
}

/// R(s Q) of a LyCORIS / kohya module as a module of the same dialect: the constrained
/// generators scaled by s, stored as upper-triangular blocks (so B - B^T = s Q) with no
/// constraint left to apply (alpha 0 under LyCORIS's rule means none).
inline LycorisDiagOftModule lycoris_at_strength(const LycorisDiagOftModule& m, double s) {
  LycorisDiagOftModule out = m;
  if (!m.splits.empty()) {
    for (LycorisDiagOftModule& part : out.splits) part = lycoris_at_strength(part, s);
    return out;
  }
  const auto write = [&](const Generators<float>& theta) {
    const Index b = m.block_size;
    std::fill(out.oft_blocks.begin(), out.oft_blocks.end(), 0.0f);
    for (Index g = 0; g < theta.count(); ++g) {
      Index k = 0;
      for (Index p = 0; p < b; ++p)
        for (Index q = p + 1; q < b; ++q, ++k)
          out.oft_blocks[static_cast<std::size_t>(g * b * b + p * b + q)] =
              static_cast<float>(s * static_cast<double>(theta.row(g)[k]));
    }
  };
  if (m.boft()) {
    const lycoris::Boft<float> op = m.boft_op();
    write(op.generators());
  } else {
    const lycoris::DiagOft<float> op = m.diag_oft();
    write(op.generators());
  }
  out.alpha = 0.0f;
  out.rule = lycoris::ConstraintRule::Lycoris;
  return out;
}

/// R(s Q) of a OneTrainer module: its generators after the scaling and the clip (by the exact
/// spectral norm), times s, with those two flags cleared; CANS stays the map Q -> R.
inline OneTrainerModule onetrainer_at_strength(const OneTrainerModule& m, double s) {
  OneTrainerModule out = m;
  out.flags.scaled = out.flags.clipped = false;
  const Index packed = m.block_size * (m.block_size - 1) / 2;
  const double scale =
      m.flags.scaled ? 2.0 * std::sqrt(static_cast<double>(m.block_size - 1)) : 1.0;
  for (Index i = 0; i < m.rows; ++i) {
    double factor = 1.0 / scale;
    if (m.flags.clipped) {
      const double sigma = oft::detail::skew_spectral_norm(
                               onetrainer::skew_block(m.theta.data() + i * packed, m.block_size)) /
                           scale;
      factor *= m.flags.clip / std::max(sigma, m.flags.clip);
    }
    for (Index j = 0; j < packed; ++j)
      out.theta[static_cast<std::size_t>(i * packed + j)] *= s * factor;
  }
  return out;
}

inline double blend_error(const SquareMatrix<double>& r, double s) {
  SquareMatrix<double> m = r * s;
  m.diagonal().array() += 1.0 - s;
  const SquareMatrix<double> gram =
      m.transpose() * m - SquareMatrix<double>::Identity(m.rows(), m.cols());
  return Eigen::SelfAdjointEigenSolver<SquareMatrix<double>>(gram, Eigen::EigenvaluesOnly)
      .eigenvalues()
      .cwiseAbs()
      .maxCoeff();
}

/// The adapter file merge_diffusion folds in, with --strength already applied to its modules.
class DiffusionAdapter {
 public:
  static DiffusionAdapter load(const std::string& path, const std::optional<Dialect>& forced,
                               const std::optional<double>& strength) {
    DiffusionAdapter a;
    a.dialect_ = resolve_dialect(path, forced);
    if (a.dialect_ == Dialect::OneTrainer) {
      a.onetrainer_ = OneTrainerAdapter::load(path);
      for (OneTrainerModule& m : a.onetrainer_->modules)
        if (strength && *strength != 1.0) m = onetrainer_at_strength(m, *strength);
    } else if (a.dialect_ == Dialect::Lycoris || a.dialect_ == Dialect::Kohya) {
      a.lycoris_ = LycorisAdapter::load(path, a.dialect_ == Dialect::Kohya
                                                  ? LycorisAdapter::Dialect::Kohya
                                                  : LycorisAdapter::Dialect::Lycoris);
      a.original_ = a.lycoris_->modules;
      for (LycorisDiagOftModule& m : a.lycoris_->modules)
        if (strength && *strength != 1.0) m = lycoris_at_strength(m, *strength);
    } else {
      throw std::invalid_argument(oft::detail::message(
          "oft: '", path, "' is a ", dialect_name(a.dialect_),
          " adapter: a PEFT adapter is a directory and merges into a Hugging Face model "
          "directory (merge_model), not into a diffusion checkpoint"));
    }
    return a;
  }

  Dialect dialect() const { return dialect_; }
  std::size_t size() const {
    return onetrainer_ ? onetrainer_->modules.size() : lycoris_->modules.size();
  }
  const std::string& name(std::size_t i) const {
    return onetrainer_ ? onetrainer_->modules[i].name : lycoris_->modules[i].name;
  }

  /// Throws std::invalid_argument unless module i fits a rows x cols target (a tensor of
  /// `rank` dimensions, its trailing ones flattened into cols) named `tensor`.
  void check(std::size_t i, const std::string& tensor, std::uint64_t rows, std::uint64_t cols,
             std::size_t rank) const {
    if (lycoris_) {
      const LycorisDiagOftModule& m = lycoris_->modules[i];
      if (rows != static_cast<std::uint64_t>(m.out_features()))
        throw std::invalid_argument(
            oft::detail::message("oft: adapter module '", m.name, "' rotates ", m.out_features(),
                                 " output channels, but its base tensor '", tensor, "' has ", rows,
                                 " rows there; another model's adapter?"));
      return;
    }
    const OneTrainerModule& m = onetrainer_->modules[i];
    const auto b = static_cast<std::uint64_t>(m.block_size);
    const bool fits = m.rows == 1 ? cols % b == 0 : cols == static_cast<std::uint64_t>(m.rows) * b;
    if (!fits || (rank != 2 && rank != 4))
      throw std::invalid_argument(oft::detail::message(
          "oft: adapter module '", m.name, "' holds ", m.rows, " block(s) of b=", m.block_size,
          " over the input, but its base tensor '", tensor, "' is ", rows, "x", cols, " (rank ",
          rank,
          "; OneTrainer merges Linear and Conv2d weights); another model's "
          "adapter?"));
  }

  /// Module i merged into `weight` ([rows, cols], cols the flattened trailing dims) at `blend`.
  RowMatrix<float> apply(std::size_t i, ConstMatrixView<float> weight, std::size_t rank,
                         double blend) const {
    if (lycoris_) return LycorisAdapter::merge(lycoris_->modules[i], weight, blend);
    const RowMatrix<double> wide = weight.map().cast<double>();
    return OneTrainerAdapter::merge(
               onetrainer_->modules[i], view(wide),
               rank == 4 ? onetrainer::Layer::Conv2d : onetrainer::Layer::Linear, blend)
        .cast<float>();
  }

  /// max ||M^T M - I||_2 over module i's blocks (stages), M = s R + (1 - s) I, in double.
  double blend_orthogonality_error(std::size_t i, double s) const {
    if (onetrainer_) {
      double worst = 0.0;
      for (const SquareMatrix<double>& r : onetrainer_->modules[i].rotations())
        worst = std::max(worst, blend_error(r, s));
      return worst;
    }
    const LycorisDiagOftModule& m = original_[i];
    std::vector<const LycorisDiagOftModule*> parts;
    if (m.splits.empty()) parts.push_back(&m);
    for (const LycorisDiagOftModule& p : m.splits) parts.push_back(&p);
    double worst = 0.0;
    for (const LycorisDiagOftModule* p : parts) {
      const std::vector<double> blocks(p->oft_blocks.begin(), p->oft_blocks.end());
      if (p->boft()) {
        lycoris::Boft<double> op(p->stages, p->blocks, p->block_size, blocks.data(),
                                 double(p->alpha), {}, s);
        worst = std::max(worst, op.orthogonality_error());
      } else {
        lycoris::DiagOft<double> op(p->blocks, p->block_size, blocks.data(), double(p->alpha), {},
                                    s, p->rule);
        worst = std::max(worst, op.orthogonality_error());
      }
    }
    return worst;
  }

 private:
  DiffusionAdapter() = default;
  Dialect dialect_ = Dialect::Lycoris;
  std::optional<LycorisAdapter> lycoris_;
  std::vector<LycorisDiagOftModule> original_;  // before --strength, for the blend's report
  std::optional<OneTrainerAdapter> onetrainer_;
};

/// A row range of a base tensor that one adapter module changes.
struct PlannedChange {
  std::size_t module = 0;
  std::uint64_t row_begin = 0, row_count = 0;
  bool swap_halves = false;
};

/// The part of a base that holds tensors: a component folder or the single file.
struct BasePart {
  std::string component;             ///< the subfolder ("" for a single file)
  ModelDirectory model;              ///< for a single file: one file, file_names = its name
  std::vector<std::string> dropped;  ///< other variants' weights files, relative to the component
  std::string qualified(const std::string& tensor) const {
    return component.empty() ? tensor : component + "/" + tensor;
  }
};

}  // namespace detail

/// The adapter's modules placed in the base (every check of names and shapes; nothing written):
/// what merge_diffusion will change. Throws std::invalid_argument naming the module for a name
/// with no tensor, one with several, a shape that does not fit, or two modules on one tensor.
inline std::vector<DiffusionTarget> plan_diffusion_targets(
    const std::vector<detail::BasePart>& parts, const detail::DiffusionAdapter& adapter) {
  using namespace detail;
  CandidateMap map;
  std::map<std::string, std::pair<const BasePart*, TensorInfo>> infos;  // qualified -> info
  for (const BasePart& part : parts) {
    const TransformerLayout layout =
        part.component.empty() ? transformer_layout(part.model.files.front().tensor_names())
                               : TransformerLayout{};
    for (const SafetensorsFile& file : part.model.files)
      for (const TensorInfo& info : file.tensors()) {
        if (!adaptable(info)) continue;
        TensorInfo qualified = info;
        qualified.name = part.qualified(info.name);
        infos.emplace(qualified.name, std::make_pair(&part, info));
        if (part.component.empty()) {
          offer_single_file(map, info, layout);
        } else if (detail::ends_with(info.name, ".weight")) {
          offer(map, part.component.c_str(), info.name.substr(0, info.name.size() - 7),
                Candidate{qualified.name, 0, 0, false, {}});
          // kohya's SDXL files name the U-Net by its LDM names: offer those too.
          const auto up_attention = [&](int i) {
            const std::string head = "up_blocks." + std::to_string(i) + ".attentions.";
            const auto at = part.model.where.lower_bound(head);
            return at != part.model.where.end() && starts_with(at->first, head);
          };
          const std::string ldm =
              part.component == "unet" ? diffusers_unet_to_ldm(info.name, up_attention) : "";
          if (!ldm.empty())
            offer(map, "unet", ldm.substr(0, ldm.size() - 7),
                  Candidate{qualified.name, 0, 0, false, {}});
        }
      }
  }
  std::vector<DiffusionTarget> targets;
  struct Taken {
    std::uint64_t begin, end;
    std::string module;
  };
  std::map<std::string, std::vector<Taken>> taken;  // tensor -> the row ranges already changed
  for (std::size_t i = 0; i < adapter.size(); ++i) {
    const std::string& name = adapter.name(i);
    const auto found = map.find(name);
    if (found == map.end() || found->second.empty()) {
      std::string known;
      for (const ComponentPrefixes& c : kComponentPrefixes)
        for (const char* p : c.prefixes)
          if (p != nullptr && starts_with(name, p)) known = p;
      throw std::invalid_argument(oft::detail::message(
          "oft: the base has no tensor for adapter module '", name, "' (",
          known.empty() ? std::string("its name starts with none of the prefixes lora_unet_, "
                                      "oft_unet_, lora_te_, lora_te1_, lora_te2_, lycoris_, ...")
                        : "no weight of the base is '" + name.substr(known.size()) +
                              "' with '.' written '_' under '" + known + "'",
          "); another model's adapter?"));
    }
    const std::vector<Candidate>& hits = found->second;
    if (hits.size() > 1) {
      std::string listed;
      for (std::size_t h = 0; h < hits.size() && h < 4; ++h)
        listed += (h ? ", '" : "'") + hits[h].tensor + "'";
      throw std::invalid_argument(oft::detail::message(
          "oft: adapter module '", name, "' matches ", hits.size(), " base tensors (", listed,
          "): '.' and '_' are one character in its name; refusing to guess"));
    }
    const Candidate& hit = hits.front();
    const TensorInfo& info = infos.at(hit.tensor).second;
    if (!hit.refused.empty())
      throw std::invalid_argument(
          oft::detail::message("oft: adapter module '", name, "' names base tensor '", hit.tensor,
                               "' (diffusers' name), but ", hit.refused, "; refusing to guess"));
    const std::uint64_t rows = hit.row_count != 0 ? hit.row_count : info.shape[0];
    std::uint64_t cols = 1;
    for (std::size_t d = 1; d < info.shape.size(); ++d) cols *= info.shape[d];
    // Ranges, not names: kohya's module on a whole fused qkv and a diffusers-named one on its k
    // rows would otherwise rotate those rows twice.
    for (const Taken& t : taken[hit.tensor])
      if (hit.row_begin < t.end && t.begin < hit.row_begin + rows)
        throw std::invalid_argument(oft::detail::message(
            "oft: adapter modules '", t.module, "' and '", name, "' both change base tensor '",
            hit.tensor, "' (rows ", std::max(t.begin, hit.row_begin), " to ",
            std::min(t.end, hit.row_begin + rows) - 1, "); refusing to apply one after the other"));
    adapter.check(i, hit.tensor, rows, cols, info.shape.size());
    taken[hit.tensor].push_back({hit.row_begin, hit.row_begin + rows, name});
    targets.push_back({name, hit.tensor, hit.row_begin, rows, hit.swap_halves});
  }
  return targets;
}

namespace detail {

/// The base opened: its component folders (of `variant`, see open_component), or the one file.
inline std::vector<BasePart> open_diffusion_base(const std::filesystem::path& base,
                                                 const std::optional<std::string>& variant = {}) {
  namespace fs = std::filesystem;
  std::vector<BasePart> parts;
  if (fs::is_directory(base)) {
    bool found = false;  // whether some component has the variant's weights
    for (const ComponentPrefixes& c : kComponentPrefixes)
      if (fs::is_directory(base / c.folder)) {
        BasePart part;
        part.component = c.folder;
        part.model = open_component(base / c.folder, variant, part.dropped);
        const fs::path weights = part.model.index_path.empty()
                                     ? fs::path(part.model.file_names.front())
                                     : part.model.index_path;
        found = found || (variant && weights_variant(weights.filename().string()) == *variant);
        parts.push_back(std::move(part));
      }
    if (parts.empty())
      throw std::invalid_argument(
          "oft: base '" + base.string() +
          "' is a folder without unet/, transformer/, text_encoder/, text_encoder_2/ or "
          "text_encoder_3/ (a diffusers model folder is expected; a Hugging Face model "
          "directory takes a PEFT adapter)");
    // diffusers' from_pretrained(variant=...) refuses a folder without any of the variant's
    // files; merging its plain weights under that flag would be a silent surprise.
    if (variant && !found)
      throw std::invalid_argument(oft::detail::message(
          "oft: --variant ", *variant, ": no component of base '", base.string(),
          "' (unet/, transformer/, text_encoder*/) has weights of that variant"));
    return parts;
  }
  if (!fs::is_regular_file(base) || base.extension() != ".safetensors")
    throw std::invalid_argument("oft: base '" + base.string() +
                                "' is neither a diffusers model folder nor a .safetensors file");
  BasePart part;
  part.model.directory = base.parent_path();
  part.model.file_names.push_back(base.filename().string());
  part.model.files.push_back(SafetensorsFile::open(base));
  for (const std::string& name : part.model.files.front().tensor_names())
    part.model.where[name] = 0;
  parts.push_back(std::move(part));
  return parts;
}

}  // namespace detail

/// Folds the adapter file `options.adapter` into the diffusion checkpoint `options.base` and
/// writes `options.out` (see the file comment). `progress`, when set, is called after each
/// tensor. Throws std::invalid_argument (bad options, an adapter for another model),
/// std::domain_error, oft::io::format_error or std::system_error, leaving no output behind.
inline DiffusionMergeReport merge_diffusion(const DiffusionMergeOptions& options,
                                            const MergeProgressCallback& progress = {}) {
  namespace fs = std::filesystem;
  using namespace detail;
  if (options.strength && options.blend)
    throw std::invalid_argument(
        "oft: --strength and --blend both given: --strength s merges the rotation R(sQ), "
        "--blend s the dialect's linear blend s R + (1 - s) I; choose one");
  for (const auto& [flag, value] :
       {std::make_pair("--strength", options.strength), std::make_pair("--blend", options.blend)})
    if (value && !std::isfinite(*value))
      throw std::invalid_argument(
          oft::detail::message("oft: ", flag, " ", *value, " is not finite"));
  const fs::path out_option = options.out;
  if (out_option.empty() || !out_option.has_filename())
    throw std::invalid_argument("oft: --out '" + out_option.string() + "' names nothing");
  const fs::path out = fs::absolute(out_option);
  if (fs::exists(out) && !options.force)
    throw std::invalid_argument("oft: output '" + out_option.string() +
                                "' exists (pass --force to replace it)");
  if (fs::exists(options.base) && fs::exists(out) && fs::equivalent(options.base, out))
    throw std::invalid_argument("oft: --out is the base itself");
  const bool folder = fs::is_directory(options.base);
  if (!folder && fs::is_directory(out))
    throw std::invalid_argument("oft: --out '" + out_option.string() +
                                "' is a folder; a single-file base merges into a file");
  if (options.variant) {
    const std::string& v = *options.variant;
    // diffusers reads the variant between dots and before a shard's "-00001-of-00002".
    if (v.empty() || v.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                         "0123456789_") != std::string::npos)
      throw std::invalid_argument("oft: --variant '" + v +
                                  "' is no diffusers variant name (letters, digits and '_', as "
                                  "fp16, bf16 or non_ema)");
    if (!folder)
      throw std::invalid_argument("oft: --variant " + v +
                                  " picks the weights files of a diffusers folder; base '" +
                                  options.base + "' is a single file");
  }

  const DiffusionAdapter adapter =
      DiffusionAdapter::load(options.adapter, options.dialect, options.strength);
  const std::vector<BasePart> parts = open_diffusion_base(options.base, options.variant);
  DiffusionMergeReport report;
  report.dialect = adapter.dialect();
  report.targets = plan_diffusion_targets(parts, adapter);
  std::map<std::string, std::vector<PlannedChange>> changes;  // qualified tensor -> its rows
  for (std::size_t i = 0; i < report.targets.size(); ++i) {
    const DiffusionTarget& t = report.targets[i];
    changes[t.tensor].push_back({i, t.row_begin, t.row_count, t.swap_halves});
  }
  const double blend = options.blend.value_or(1.0);
  if (options.blend)
    for (std::size_t i = 0; i < adapter.size(); ++i)
      report.blend_orthogonality_error =
          std::max(report.blend_orthogonality_error, adapter.blend_orthogonality_error(i, blend));

  const bool convert = options.dtype != MergeDtype::Same;
  const Dtype wanted = merge_dtype(options.dtype);
  const auto output_dtype = [&](const TensorView& v) {
    return convert && is_mergeable(v.dtype) ? wanted : v.dtype;
  };
  MergeProgress state;
  for (const BasePart& part : parts)
    for (const SafetensorsFile& file : part.model.files)
      for (const TensorInfo& info : file.tensors()) {
        ++state.tensors_total;
        state.bytes_total += bytes_as(file.view(info), output_dtype(file.view(info)));
      }

  // One file streamed by merge_model's stream_file (io/model_merge.hpp): each tensor copied,
  // or widened, merged per target rows and rounded once to its output dtype.
  const auto stream = [&](const BasePart& part, const SafetensorsFile& file,
                          const fs::path& destination) {
    const auto layout = [&](const TensorView& v) -> TensorLayout {
      return {output_dtype(v), v.shape};
    };
    const auto produce = [&](const TensorView& v, std::byte* dst, std::size_t bytes) {
      const auto it = changes.find(part.qualified(v.name));
      if (it == changes.end() && output_dtype(v) == v.dtype) {
        if (bytes != 0) std::memcpy(dst, v.data, bytes);
      } else {
        std::vector<float> values = v.to_floats();
        release_pages(v.data, v.bytes);  // now, not after the merge: the float copy is enough
        if (it != changes.end()) {
          const std::uint64_t cols = v.numel() / v.shape[0];
          for (const PlannedChange& c : it->second) {
            float* rows = values.data() + c.row_begin * cols;
            float* const last = rows + c.row_count * cols;
            // Swapping two equal halves is rotating by one of them; the same rotation undoes it.
            float* const middle = rows + c.row_count / 2 * cols;
            if (c.swap_halves) std::rotate(rows, middle, last);
            const ConstMatrixView<float> weight(rows, static_cast<Index>(c.row_count),
                                                static_cast<Index>(cols));
            const RowMatrix<float> merged = adapter.apply(c.module, weight, v.shape.size(), blend);
            std::memcpy(rows, merged.data(),
                        static_cast<std::size_t>(merged.size()) * sizeof(float));
            if (c.swap_halves) std::rotate(rows, middle, last);
          }
        }
        encode(values.data(), values.size(), output_dtype(v), dst);
      }
      ++state.tensors_done;
      state.bytes_done += bytes;
      state.current = part.qualified(v.name);
      if (progress) progress(state);
    };
    stream_file(file, destination, layout, produce);
    report.tensors += file.size();
    report.bytes += fs::file_size(destination);
    ++report.files;
  };

  if (!folder) {
    stream(parts.front(), parts.front().model.files.front(), out);  // atomic by itself
    return report;
  }
  const fs::path staging = staging_directory(out);
  fs::remove_all(staging);
  fs::create_directories(staging);
  RemoveOnFailure cleanup(staging);
  std::set<std::string> written;  // and the other variants' weights, which are not copied either
  for (const BasePart& part : parts) {
    for (const std::string& name : part.dropped) {
      written.insert(part.component + "/" + name);
      report.dropped.push_back(part.component + "/" + name);
    }
    for (std::size_t f = 0; f < part.model.files.size(); ++f) {
      const std::string relative = part.component + "/" + part.model.file_names[f];
      fs::create_directories((staging / relative).parent_path());
      stream(part, part.model.files[f], staging / relative);
      written.insert(relative);
    }
    if (!part.model.index_path.empty() && convert) {  // sizes changed: rewrite total_size
      const std::string relative = part.component + "/" + part.model.index_path.filename().string();
      std::ifstream in(part.model.index_path);
      nlohmann::ordered_json index = nlohmann::ordered_json::parse(in);
      std::uint64_t total = 0;
      for (const SafetensorsFile& file : part.model.files)
        for (const TensorInfo& info : file.tensors())
          total += bytes_as(file.view(info), output_dtype(file.view(info)));
      if (!index.contains("metadata") || !index["metadata"].is_object())
        index["metadata"] = nlohmann::ordered_json::object();
      index["metadata"]["total_size"] = total;
      std::ofstream(staging / relative) << index.dump(2) << "\n";
      written.insert(relative);
    }
  }
  report.other_files += detail::copy_other_files(options.base, staging, written);
  commit_directory(staging, out);
  cleanup.release();
  return report;
}

}  // namespace oft::io
