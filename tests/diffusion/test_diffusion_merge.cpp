// oft merge of LyCORIS / kohya / OneTrainer OFT files into diffusion checkpoints
// (io/diffusion_merge.hpp). The bases are written here with real Stable Diffusion / SDXL / FLUX
// tensor names (and small shapes that the adapters of tests/dialects/fixtures fit); each merged
// tensor must equal the library's per-weight merge (LycorisAdapter::merge,
// OneTrainerAdapter::merge) rounded to the tensor's dtype bit for bit, every other tensor and
// file must be byte-identical, and every refusal must leave nothing behind.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off.
// clang-format off
#include <oft/io/diffusion_merge.hpp>

#include <gtest/gtest.h>
// clang-format on

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "io_test_support.hpp"

namespace {

using namespace oft::io;
using oft::Index;
using oft::RowMatrix;
using oft_io_test::ScratchDir;
namespace fs = std::filesystem;

fs::path dialect_fixture(const std::string& name) {
  return fs::path(OFT_DIALECTS_FIXTURES_DIR) / name;
}

struct TensorSpec {
  std::string name;
  Dtype dtype;
  std::vector<std::uint64_t> shape;
};

/// Writes seeded random tensors (values in [-1, 1), rounded to each dtype) to `path`.
void write_base(const fs::path& path, const std::vector<TensorSpec>& specs, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<std::vector<std::byte>> keep;
  keep.reserve(specs.size());
  SafetensorsWriter writer;
  for (const TensorSpec& s : specs) {
    std::size_t n = 1;
    for (const auto d : s.shape) n *= static_cast<std::size_t>(d);
    std::vector<float> values(n);
    for (float& v : values) v = dist(rng);
    keep.emplace_back(n * static_cast<std::size_t>(dtype_bits(s.dtype) / 8));
    detail::encode(values.data(), n, s.dtype, keep.back().data());
    writer.add(s.name, s.dtype, s.shape, keep.back().data(), keep.back().size());
  }
  writer.add_metadata("format", "pt");
  fs::create_directories(path.parent_path());
  writer.write(path);
}

std::string bytes_of(const TensorView& v) {
  return std::string(reinterpret_cast<const char*>(v.data), v.bytes);
}

/// `expected` rows [begin, begin + rows) of base tensor `v` replaced by `merge(rows view)`,
/// encoded in v's dtype: what merge_diffusion must write.
template <class Merge>
std::string merged_bytes(const TensorView& v, std::uint64_t begin, std::uint64_t rows,
                         const Merge& merge) {
  std::vector<float> values = v.to_floats();
  const std::uint64_t cols = v.numel() / v.shape[0];
  float* at = values.data() + begin * cols;
  const RowMatrix<float> out =
      merge(oft::ConstMatrixView<float>(at, static_cast<Index>(rows), static_cast<Index>(cols)));
  std::memcpy(at, out.data(), static_cast<std::size_t>(out.size()) * sizeof(float));
  std::string bytes(v.bytes, '\0');
  detail::encode(values.data(), values.size(), v.dtype, reinterpret_cast<std::byte*>(bytes.data()));
  return bytes;
}

/// Every tensor of `out` byte-identical to `base`'s, but those in `changed`.
void expect_untouched(const SafetensorsFile& base, const SafetensorsFile& out,
                      const std::set<std::string>& changed) {
  ASSERT_EQ(base.tensor_names(), out.tensor_names());
  for (const std::string& name : base.tensor_names()) {
    if (changed.count(name)) continue;
    EXPECT_EQ(bytes_of(base.tensor(name)), bytes_of(out.tensor(name))) << name;
  }
}

// kohya_k4: kohya sd-scripts OFT with SD 1.5 diffusers names (oft_unet_down_blocks_0_...).
const char* const kToOut = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight";
const char* const kToQ = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
const char* const kMidProjIn = "mid_block.attentions.0.proj_in.weight";

void write_diffusers_folder(const fs::path& root) {
  write_base(root / "unet" / "diffusion_pytorch_model.safetensors",
             {{"conv_in.weight", Dtype::F16, {8, 4, 3, 3}},
              {"conv_in.bias", Dtype::F16, {8}},
              {kToOut, Dtype::F16, {24, 8}},
              {kToQ, Dtype::F32, {16, 8}},
              {kMidProjIn, Dtype::BF16, {12, 12, 1, 1}},
              {"down_blocks.0.attentions.0.proj_in.weight", Dtype::F16, {5, 12}},
              {"down_blocks.1.downsamplers.0.conv.weight", Dtype::F16, {5, 2, 3, 1}},
              {"mid_block.attentions.0.to_k.weight", Dtype::F32, {7, 8}}},
             1);
  write_base(root / "text_encoder" / "model.safetensors",
             {{"text_model.encoder.layers.0.mlp.fc1.weight", Dtype::F16, {6, 16}},
              {"text_model.encoder.layers.0.mlp.fc1.bias", Dtype::F16, {6}}},
             2);
  write_base(root / "vae" / "diffusion_pytorch_model.safetensors",
             {{"decoder.conv_in.weight", Dtype::F16, {4, 4, 3, 3}}}, 3);
  oft_io_test::write_bytes(root / "model_index.json",
                           "{\"_class_name\": \"StableDiffusionPipeline\"}\n");
  oft_io_test::write_bytes(root / "unet" / "config.json", "{\"layers_per_block\": 2}\n");
}

TEST(DiffusionMerge, KohyaIntoDiffusersFolderEqualsTheLibraryMergeBitForBit) {
  ScratchDir scratch;
  write_diffusers_folder(scratch / "base");
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = dialect_fixture("kohya_k4.safetensors").string();
  options.out = (scratch / "out").string();
  std::size_t calls = 0;
  const DiffusionMergeReport report = merge_diffusion(options, [&](const MergeProgress& p) {
    ++calls;
    EXPECT_LE(p.tensors_done, p.tensors_total);
  });
  EXPECT_EQ(report.dialect, Dialect::Kohya);
  ASSERT_EQ(report.targets.size(), 3u);
  EXPECT_EQ(report.files, 2u);
  EXPECT_EQ(calls, report.tensors);
  EXPECT_EQ(report.other_files, 3u);  // vae's file, model_index.json, unet/config.json

  const LycorisAdapter adapter = LycorisAdapter::load(options.adapter);
  const SafetensorsFile base =
      SafetensorsFile::open(scratch / "base/unet/diffusion_pytorch_model.safetensors");
  const SafetensorsFile out =
      SafetensorsFile::open(scratch / "out/unet/diffusion_pytorch_model.safetensors");
  const std::pair<const char*, const char*> pairs[] = {
      {kToOut, "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"},
      {kToQ, "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"},
      {kMidProjIn, "oft_unet_mid_block_attentions_0_proj_in"}};
  for (const auto& [tensor, module_binding] : pairs) {
    const std::string module = module_binding;  // lambdas cannot capture a structured binding
    const TensorView v = base.tensor(tensor);
    const std::string expected = merged_bytes(v, 0, v.shape[0], [&](oft::ConstMatrixView<float> w) {
      return LycorisAdapter::merge(adapter.module(module), w, 1.0);
    });
    EXPECT_EQ(bytes_of(out.tensor(tensor)), expected) << tensor;
    EXPECT_NE(bytes_of(out.tensor(tensor)), bytes_of(v)) << tensor << " unchanged";
  }
  expect_untouched(base, out, {kToOut, kToQ, kMidProjIn});
  for (const char* same : {"vae/diffusion_pytorch_model.safetensors", "model_index.json",
                           "text_encoder/model.safetensors", "unet/config.json"})
    EXPECT_EQ(oft_io_test::read_bytes(scratch / "base" / same),
              oft_io_test::read_bytes(scratch / "out" / same))
        << same;
}

TEST(DiffusionMerge, OneTrainerBlendIntoDiffusersFolderEqualsTheLibraryMerge) {
  ScratchDir scratch;
  write_diffusers_folder(scratch / "base");
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = dialect_fixture("onetrainer_scaled.safetensors").string();
  options.out = (scratch / "out").string();
  options.blend = 0.7;
  const DiffusionMergeReport report = merge_diffusion(options);
  EXPECT_EQ(report.dialect, Dialect::OneTrainer);
  ASSERT_EQ(report.targets.size(), 5u);
  // s R + (1 - s) I with s = 0.7 is not a rotation: the report says by how much.
  EXPECT_GT(report.blend_orthogonality_error, 1e-4);

  const OneTrainerAdapter adapter = OneTrainerAdapter::load(options.adapter);
  for (const DiffusionTarget& t : report.targets) {
    const std::string component = t.tensor.substr(0, t.tensor.find('/'));
    const std::string name = t.tensor.substr(t.tensor.find('/') + 1);
    const std::string file = component == "unet" ? "unet/diffusion_pytorch_model.safetensors"
                                                 : "text_encoder/model.safetensors";
    const SafetensorsFile base = SafetensorsFile::open(scratch / "base" / file);
    const SafetensorsFile out = SafetensorsFile::open(scratch / "out" / file);
    const TensorView v = base.tensor(name);
    const auto layer =
        v.shape.size() == 4 ? oft::onetrainer::Layer::Conv2d : oft::onetrainer::Layer::Linear;
    const std::string expected = merged_bytes(v, 0, v.shape[0], [&](oft::ConstMatrixView<float> w) {
      const RowMatrix<double> wide = w.map().cast<double>();
      return RowMatrix<float>(
          OneTrainerAdapter::merge(adapter.module(t.module), oft::view(wide), layer, 0.7)
              .cast<float>());
    });
    EXPECT_EQ(bytes_of(out.tensor(name)), expected) << t.tensor;
  }
  const SafetensorsFile base =
      SafetensorsFile::open(scratch / "base/unet/diffusion_pytorch_model.safetensors");
  const SafetensorsFile out =
      SafetensorsFile::open(scratch / "out/unet/diffusion_pytorch_model.safetensors");
  expect_untouched(
      base, out,
      {"conv_in.weight", "down_blocks.0.attentions.0.proj_in.weight",
       "down_blocks.1.downsamplers.0.conv.weight", "mid_block.attentions.0.to_k.weight"});
}

TEST(DiffusionMerge, KohyaDiffusersNamesIntoAnSD15SingleFileThroughTheLdmNames) {
  ScratchDir scratch;
  const std::string to_out =
      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight";
  const std::string to_q =
      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
  const std::string proj_in = "model.diffusion_model.middle_block.1.proj_in.weight";
  write_base(scratch / "sd15.safetensors",
             {{to_out, Dtype::F16, {24, 8}},
              {to_q, Dtype::F16, {16, 8}},
              {proj_in, Dtype::F16, {12, 12, 1, 1}},
              {"model.diffusion_model.input_blocks.0.0.weight", Dtype::F16, {8, 4, 3, 3}},
              {"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
               Dtype::F16,
               {6, 16}},
              {"first_stage_model.decoder.conv_in.weight", Dtype::F16, {4, 4, 3, 3}},
              {"alphas_cumprod", Dtype::F32, {10}}},
             4);
  DiffusionMergeOptions options;
  options.base = (scratch / "sd15.safetensors").string();
  options.adapter = dialect_fixture("kohya_k4.safetensors").string();
  options.out = (scratch / "merged.safetensors").string();
  options.dtype = MergeDtype::Same;
  const DiffusionMergeReport report = merge_diffusion(options);
  ASSERT_EQ(report.targets.size(), 3u);
  EXPECT_EQ(report.targets[2].tensor, proj_in);

  const LycorisAdapter adapter = LycorisAdapter::load(options.adapter);
  const SafetensorsFile base = SafetensorsFile::open(options.base);
  const SafetensorsFile out = SafetensorsFile::open(options.out);
  const std::pair<std::string, const char*> pairs[] = {
      {to_out, "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"},
      {to_q, "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"},
      {proj_in, "oft_unet_mid_block_attentions_0_proj_in"}};
  for (const auto& [tensor, module_binding] : pairs) {
    const std::string module = module_binding;  // lambdas cannot capture a structured binding
    const TensorView v = base.tensor(tensor);
    EXPECT_EQ(bytes_of(out.tensor(tensor)), merged_bytes(v, 0, v.shape[0],
                                                         [&](oft::ConstMatrixView<float> w) {
                                                           return LycorisAdapter::merge(
                                                               adapter.module(module), w, 1.0);
                                                         }))
        << tensor;
  }
  expect_untouched(base, out, {to_out, to_q, proj_in});
  EXPECT_EQ(out.metadata(), base.metadata());
}

/// A LyCORIS file with lycoris_plain_b4's modules (made by lycoris-lora) under other names.
fs::path renamed_lycoris(const fs::path& dir, const std::vector<std::string>& names) {
  LycorisAdapter adapter = LycorisAdapter::load(dialect_fixture("lycoris_plain_b4.safetensors"));
  for (std::size_t i = 0; i < names.size() && i < adapter.modules.size(); ++i)
    adapter.modules[i].name = names[i];
  adapter.modules.resize(names.size());
  const fs::path path = dir / "renamed.safetensors";
  adapter.save(path);
  return path;
}

TEST(DiffusionMerge, SdxlSingleFileLdmNamesAndOpenClipFusedSlice) {
  ScratchDir scratch;
  // lycoris_plain_b4: fc1 rotates 16 channels, fc2 24.
  const std::string in_proj =
      "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight";
  const std::string proj_in = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
  write_base(
      scratch / "sdxl.safetensors",
      {{in_proj, Dtype::F16, {48, 8}},
       {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias",
        Dtype::F16,
        {48}},
       {proj_in, Dtype::BF16, {24, 16}},
       {"conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight",
        Dtype::F16,
        {16, 8}}},
      5);
  const fs::path adapter_path =
      renamed_lycoris(scratch.path(), {"lora_te2_text_model_encoder_layers_0_self_attn_k_proj",
                                       "lora_unet_input_blocks_4_1_proj_in"});
  DiffusionMergeOptions options;
  options.base = (scratch / "sdxl.safetensors").string();
  options.adapter = adapter_path.string();
  options.out = (scratch / "merged.safetensors").string();
  const DiffusionMergeReport report = merge_diffusion(options);
  ASSERT_EQ(report.targets.size(), 2u);
  EXPECT_EQ(report.targets[0].tensor, in_proj);
  EXPECT_EQ(report.targets[0].row_begin, 16u);  // k: the second third of q, k, v
  EXPECT_EQ(report.targets[0].row_count, 16u);

  const LycorisAdapter adapter = LycorisAdapter::load(adapter_path);
  const SafetensorsFile base = SafetensorsFile::open(options.base);
  const SafetensorsFile out = SafetensorsFile::open(options.out);
  EXPECT_EQ(bytes_of(out.tensor(in_proj)),
            merged_bytes(base.tensor(in_proj), 16, 16, [&](oft::ConstMatrixView<float> w) {
              return LycorisAdapter::merge(adapter.modules[0], w, 1.0);
            }));
  EXPECT_EQ(bytes_of(out.tensor(proj_in)),
            merged_bytes(base.tensor(proj_in), 0, 24, [&](oft::ConstMatrixView<float> w) {
              return LycorisAdapter::merge(adapter.modules[1], w, 1.0);
            }));
  expect_untouched(base, out, {in_proj, proj_in});
}

TEST(DiffusionMerge, KohyaFluxSplitsIntoABflSingleFile) {
  ScratchDir scratch;
  const std::string qkv = "double_blocks.0.img_attn.qkv.weight";
  const std::string linear1 = "single_blocks.0.linear1.weight";
  write_base(scratch / "flux.safetensors",
             {{qkv, Dtype::BF16, {36, 8}},
              {linear1, Dtype::BF16, {40, 8}},
              {"double_blocks.0.img_attn.proj.weight", Dtype::BF16, {12, 12}}},
             6);
  DiffusionMergeOptions options;
  options.base = (scratch / "flux.safetensors").string();
  options.adapter = dialect_fixture("kohya_flux.safetensors").string();
  options.out = (scratch / "merged.safetensors").string();
  options.blend = 0.5;
  const DiffusionMergeReport report = merge_diffusion(options);
  ASSERT_EQ(report.targets.size(), 2u);
  const LycorisAdapter adapter = LycorisAdapter::load(options.adapter);
  const SafetensorsFile base = SafetensorsFile::open(options.base);
  const SafetensorsFile out = SafetensorsFile::open(options.out);
  for (const auto& [tensor, module_binding] :
       {std::make_pair(qkv, "oft_unet_double_blocks_0_img_attn_qkv"),
        std::make_pair(linear1, "oft_unet_single_blocks_0_linear1")}) {
    const std::string module = module_binding;  // lambdas cannot capture a structured binding
    const TensorView v = base.tensor(tensor);
    EXPECT_EQ(bytes_of(out.tensor(tensor)), merged_bytes(v, 0, v.shape[0],
                                                         [&](oft::ConstMatrixView<float> w) {
                                                           return LycorisAdapter::merge(
                                                               adapter.module(module), w, 0.5);
                                                         }))
        << tensor;
  }
  expect_untouched(base, out, {qkv, linear1});
}

TEST(DiffusionMerge, StrengthIsTheRotationOfTheScaledConstrainedGenerator) {
  ScratchDir scratch;
  write_base(scratch / "base.safetensors",
             {{"model.diffusion_model.fc1.weight", Dtype::F32, {16, 8}}}, 7);
  const fs::path adapter_path = renamed_lycoris(scratch.path(), {"lycoris_fc1"});
  const LycorisAdapter adapter = LycorisAdapter::load(adapter_path);
  const LycorisDiagOftModule& m = adapter.modules[0];
  const SafetensorsFile base = SafetensorsFile::open(scratch / "base.safetensors");
  const std::vector<float> w = base.tensor("model.diffusion_model.fc1.weight").to_floats();

  for (const double s : {0.0, 0.5, -1.0, 1.0}) {
    DiffusionMergeOptions options;
    options.base = (scratch / "base.safetensors").string();
    options.adapter = adapter_path.string();
    options.out = (scratch / "s.safetensors").string();
    options.force = true;
    options.strength = s;
    merge_diffusion(options);
    const std::vector<float> got =
        SafetensorsFile::open(options.out).tensor("model.diffusion_model.fc1.weight").to_floats();
    // Reference in double: Q from LyCORIS's constrained generators, R = (I + sQ)(I - sQ)^-1,
    // W' = blockdiag(R)^T W along the rows.
    const std::vector<double> blocks(m.oft_blocks.begin(), m.oft_blocks.end());
    const oft::lycoris::DiagOft<double> op(m.blocks, m.block_size, blocks.data(), double(m.alpha));
    const Index b = m.block_size;
    double worst = 0.0, scale = 0.0;
    for (Index k = 0; k < m.blocks; ++k) {
      oft::SquareMatrix<double> q(b, b);
      oft::unpack_skew(op.generators().row(k), b, q);
      q *= s;
      const oft::SquareMatrix<double> id = oft::SquareMatrix<double>::Identity(b, b);
      const oft::SquareMatrix<double> r = (id + q) * (id - q).inverse();
      for (Index i = 0; i < b; ++i)
        for (Index j = 0; j < 8; ++j) {
          double want = 0.0;
          for (Index p = 0; p < b; ++p)
            want += r(p, i) * double(w[static_cast<std::size_t>((k * b + p) * 8 + j)]);
          worst = std::max(
              worst, std::abs(want - double(got[static_cast<std::size_t>((k * b + i) * 8 + j)])));
          scale = std::max(scale, std::abs(want));
        }
    }
    // float32 merge of b-term sums of values <= 1 through a float32 R: a few hundred ulps at most.
    EXPECT_LT(worst, 1e-5 * std::max(1.0, scale)) << "s=" << s;
    if (s == 0.0) {
      EXPECT_EQ(got, w);  // R(0) = I
    }
    if (s == 1.0) {  // the adapter itself: LyCORIS's merge, bit for bit
      const RowMatrix<float> want =
          LycorisAdapter::merge(m, oft::ConstMatrixView<float>(w.data(), 16, 8), 1.0);
      EXPECT_EQ(got, std::vector<float>(want.data(), want.data() + want.size()));
    }
  }
}

TEST(DiffusionMerge, OneTrainerStrengthZeroIsTheIdentity) {
  ScratchDir scratch;
  write_diffusers_folder(scratch / "base");
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = dialect_fixture("onetrainer_clipped.safetensors").string();
  options.out = (scratch / "out").string();
  options.strength = 0.0;
  merge_diffusion(options);
  const SafetensorsFile base =
      SafetensorsFile::open(scratch / "base/unet/diffusion_pytorch_model.safetensors");
  const SafetensorsFile out =
      SafetensorsFile::open(scratch / "out/unet/diffusion_pytorch_model.safetensors");
  expect_untouched(base, out, {});  // R(0) = I exactly: W (I^T - I) adds zeros
}

/// Runs merge_diffusion expecting std::invalid_argument whose message contains `part`, and no
/// output.
void expect_refused(const DiffusionMergeOptions& options, const std::string& part) {
  try {
    merge_diffusion(options);
    ADD_FAILURE() << "not refused: " << part;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(options.out)) << options.out;
  const fs::path parent = fs::path(options.out).parent_path();
  for (const auto& entry : fs::directory_iterator(parent))
    EXPECT_EQ(entry.path().filename().string().find(".oft-partial"), std::string::npos);
}

TEST(DiffusionMerge, RefusesAmbiguousMissingMisshapenAndBothStrengthAndBlend) {
  ScratchDir scratch;
  write_base(scratch / "base.safetensors",
             {{"model.diffusion_model.proj_out.weight", Dtype::F16, {6, 4}},
              {"model.diffusion_model.proj.out.weight", Dtype::F16, {6, 4}},
              {"model.diffusion_model.fc1.weight", Dtype::F16, {16, 4}},
              {"model.diffusion_model.fc2.weight", Dtype::F16, {24, 4}},
              {"model.diffusion_model.fc3.weight", Dtype::F16, {20, 4}}},
             8);
  DiffusionMergeOptions options;
  options.base = (scratch / "base.safetensors").string();
  options.out = (scratch / "out.safetensors").string();

  options.adapter =
      renamed_lycoris(scratch.path(), {"lycoris_fc1", "lycoris_fc2", "lycoris_proj_out"}).string();
  expect_refused(options, "matches 2 base tensors");
  options.adapter = renamed_lycoris(scratch.path(), {"lycoris_fc1", "lycoris_fc9"}).string();
  expect_refused(options, "no tensor for adapter module 'lycoris_fc9'");
  options.adapter = renamed_lycoris(scratch.path(), {"lycoris_fc1", "lycoris_fc3"}).string();
  expect_refused(options, "rotates 24 output channels, but its base tensor");
  options.adapter = renamed_lycoris(scratch.path(), {"lycoris_fc1"}).string();
  options.strength = 0.5;
  options.blend = 0.5;
  expect_refused(options, "--strength and --blend both given");
  options.blend.reset();
  options.adapter = dialect_fixture("kohya_k4.safetensors").string();
  expect_refused(options, "no tensor for adapter module 'oft_unet_down_blocks_0");
  // Two names for one tensor (LyCORIS's and kohya's prefixes) would merge it twice.
  options.strength.reset();
  options.adapter = renamed_lycoris(scratch.path(), {"lora_unet_fc1", "lycoris_fc1"}).string();
  expect_refused(options, "both change base tensor");
  // An existing output is kept unless --force.
  oft_io_test::write_bytes(scratch / "exists.safetensors", "x");
  options.adapter = renamed_lycoris(scratch.path(), {"lycoris_fc1"}).string();
  options.out = (scratch / "exists.safetensors").string();
  EXPECT_THROW(merge_diffusion(options), std::invalid_argument);
  EXPECT_EQ(oft_io_test::read_bytes(scratch / "exists.safetensors"), "x");
}

TEST(DiffusionMerge, RefusedFolderMergeLeavesNoFolder) {
  ScratchDir scratch;
  write_diffusers_folder(scratch / "base");
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.out = (scratch / "out").string();
  options.adapter = dialect_fixture("lycoris_plain_b4.safetensors").string();  // fc1, fc2: absent
  expect_refused(options, "no tensor for adapter module 'lycoris_fc1'");
}

TEST(DiffusionMerge, ShardedComponentWithDtypeConversionRewritesTheIndex) {
  ScratchDir scratch;
  const fs::path unet = scratch / "base/unet";
  write_base(unet / "diffusion_pytorch_model-00001-of-00002.safetensors",
             {{kToOut, Dtype::F16, {24, 8}}, {"conv_in.weight", Dtype::F16, {8, 4, 3, 3}}}, 9);
  write_base(unet / "diffusion_pytorch_model-00002-of-00002.safetensors",
             {{kToQ, Dtype::BF16, {16, 8}}, {kMidProjIn, Dtype::F16, {12, 12, 1, 1}}}, 10);
  oft_io_test::write_bytes(
      unet / "diffusion_pytorch_model.safetensors.index.json",
      std::string("{\"metadata\": {\"total_size\": 1504}, \"weight_map\": {") + "\"" + kToOut +
          "\": \"diffusion_pytorch_model-00001-of-00002.safetensors\", \"conv_in.weight\": "
          "\"diffusion_pytorch_model-00001-of-00002.safetensors\", \"" +
          kToQ + "\": \"diffusion_pytorch_model-00002-of-00002.safetensors\", \"" + kMidProjIn +
          "\": \"diffusion_pytorch_model-00002-of-00002.safetensors\"}}\n");
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = dialect_fixture("kohya_k4.safetensors").string();
  options.out = (scratch / "out").string();
  options.dtype = MergeDtype::F32;
  const DiffusionMergeReport report = merge_diffusion(options);
  EXPECT_EQ(report.files, 2u);
  ASSERT_EQ(report.targets.size(), 3u);
  // Every tensor is float32 now: 4 bytes a value, the index's total_size says so.
  const std::uint64_t values = 24 * 8 + 8 * 4 * 3 * 3 + 16 * 8 + 12 * 12;
  const ShardedSafetensors merged =
      ShardedSafetensors::open(scratch / "out/unet/diffusion_pytorch_model.safetensors.index.json");
  EXPECT_EQ(merged.index_metadata().at("total_size").get<std::uint64_t>(), 4 * values);
  const LycorisAdapter adapter = LycorisAdapter::load(options.adapter);
  const SafetensorsFile base =
      SafetensorsFile::open(unet / "diffusion_pytorch_model-00002-of-00002.safetensors");
  const SafetensorsFile out = SafetensorsFile::open(
      scratch / "out/unet/diffusion_pytorch_model-00002-of-00002.safetensors");
  EXPECT_EQ(out.tensor(kToQ).dtype, Dtype::F32);
  const std::vector<float> w = base.tensor(kToQ).to_floats();
  const RowMatrix<float> want = LycorisAdapter::merge(
      adapter.module("oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"),
      oft::ConstMatrixView<float>(w.data(), 16, 8), 1.0);
  EXPECT_EQ(out.tensor(kToQ).to_floats(), std::vector<float>(want.data(), want.data() + 128));
}

TEST(DiffusionNames, DiffusersUnetNamesMapBackToLdm) {
  const auto attention = [](int i) { return i != 0; };  // SD 1.5: up block 0 has none
  for (const char* ldm :
       {"input_blocks.1.1.proj_in.weight", "input_blocks.5.0.in_layers.2.weight",
        "input_blocks.3.0.op.weight", "input_blocks.0.0.weight",
        "middle_block.0.out_layers.3.weight", "middle_block.1.proj_out.weight",
        "middle_block.2.emb_layers.1.weight",
        "output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight", "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight", "output_blocks.0.0.skip_connection.weight",
        "time_embed.2.weight", "label_emb.0.0.weight", "out.2.weight"}) {
    const std::string diffusers = detail::ldm_unet_to_diffusers(ldm);
    EXPECT_EQ(detail::diffusers_unet_to_ldm(diffusers, attention), ldm) << diffusers;
  }
  EXPECT_EQ(detail::diffusers_unet_to_ldm("down_blocks.0.foo.weight", attention), "");
}

TEST(DiffusionMerge, KohyaSdxlLdmNamesIntoADiffusersFolder) {
  ScratchDir scratch;
  write_base(scratch / "base/unet/diffusion_pytorch_model.safetensors",
             {{"down_blocks.1.attentions.0.proj_in.weight", Dtype::F16, {16, 8}},
              {"up_blocks.1.attentions.0.proj_in.weight", Dtype::F16, {24, 8}}},
             11);
  const fs::path adapter_path = renamed_lycoris(
      scratch.path(),
      {"lora_unet_input_blocks_4_1_proj_in", "lora_unet_output_blocks_3_1_proj_in"});
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = adapter_path.string();
  options.out = (scratch / "out").string();
  const DiffusionMergeReport report = merge_diffusion(options);
  ASSERT_EQ(report.targets.size(), 2u);
  EXPECT_EQ(report.targets[0].tensor, "unet/down_blocks.1.attentions.0.proj_in.weight");
  EXPECT_EQ(report.targets[1].tensor, "unet/up_blocks.1.attentions.0.proj_in.weight");
}

TEST(DiffusionNames, LdmUnetNamesMapToDiffusers) {
  using detail::ldm_unet_to_diffusers;
  EXPECT_EQ(ldm_unet_to_diffusers("input_blocks.1.1.proj_in.weight"),
            "down_blocks.0.attentions.0.proj_in.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("input_blocks.5.0.in_layers.2.weight"),
            "down_blocks.1.resnets.1.conv1.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("input_blocks.3.0.op.weight"),
            "down_blocks.0.downsamplers.0.conv.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("input_blocks.0.0.weight"), "conv_in.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("middle_block.2.emb_layers.1.weight"),
            "mid_block.resnets.1.time_emb_proj.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight"),
            "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("output_blocks.2.1.conv.weight"),
            "up_blocks.0.upsamplers.0.conv.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("output_blocks.5.2.conv.weight"),
            "up_blocks.1.upsamplers.0.conv.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("output_blocks.0.0.skip_connection.weight"),
            "up_blocks.0.resnets.0.conv_shortcut.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("time_embed.2.weight"), "time_embedding.linear_2.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("label_emb.0.0.weight"), "add_embedding.linear_1.weight");
  EXPECT_EQ(ldm_unet_to_diffusers("out.2.weight"), "conv_out.weight");
}

// ---- diffusers-named adapters into FLUX and SD3 single files -------------------------------
// LyCORIS (and SimpleTuner, diffusers-style kohya / OneTrainer) name a FLUX or SD3 transformer's
// modules after diffusers' FluxTransformer2DModel / SD3Transformer2DModel, whose q, k, v (and
// FLUX's single-block MLP input) are separate Linear layers; the single files fuse them. A
// merged fused tensor must equal what diffusers' converter would give: the tensor cut into its
// diffusers weights (single_file_utils.py's chunk / split), each merged alone by the library's
// per-weight function, put back together.

/// A LyCORIS diag-OFT module named `name` rotating `rows` output channels in blocks of 4: the
/// generators of lycoris_plain_b4's fc2 (made by lycoris-lora) taken cyclically from block
/// `shift`, so that the modules of one test rotate differently.
LycorisDiagOftModule lycoris_module(const std::string& name, Index rows, Index shift) {
  const LycorisAdapter source =
      LycorisAdapter::load(dialect_fixture("lycoris_plain_b4.safetensors"));
  LycorisDiagOftModule m = source.module("lycoris_fc2");
  const Index b = m.block_size, have = m.blocks;
  const auto block = static_cast<std::size_t>(b * b);
  std::vector<float> blocks;
  for (Index g = 0; g < rows / b; ++g) {
    const auto from = m.oft_blocks.begin() + static_cast<std::ptrdiff_t>(((g + shift) % have)) *
                                                 static_cast<std::ptrdiff_t>(block);
    blocks.insert(blocks.end(), from, from + static_cast<std::ptrdiff_t>(block));
  }
  m.name = name;
  m.blocks = rows / b;
  m.oft_blocks = blocks;
  return m;
}

fs::path lycoris_file(const fs::path& dir, const std::vector<LycorisDiagOftModule>& modules) {
  LycorisAdapter adapter = LycorisAdapter::load(dialect_fixture("lycoris_plain_b4.safetensors"));
  adapter.modules = modules;
  const fs::path path = dir / "diffusers_named.safetensors";
  adapter.save(path);
  return path;
}

using PieceMerge = std::function<RowMatrix<float>(oft::ConstMatrixView<float>)>;

/// `v` cut into consecutive row blocks of `pieces` (rows each; together all of v's), each merged
/// alone as a separate weight (an empty merge leaves it), put back in order, encoded in v's dtype.
std::string fused_merge(const TensorView& v,
                        const std::vector<std::pair<std::uint64_t, PieceMerge>>& pieces) {
  const std::vector<float> values = v.to_floats();
  const std::uint64_t cols = v.numel() / v.shape[0];
  std::vector<float> fused;
  std::uint64_t row = 0;
  for (const auto& piece : pieces) {
    const std::uint64_t rows = piece.first;
    RowMatrix<float> weight(static_cast<Index>(rows), static_cast<Index>(cols));
    std::memcpy(weight.data(), values.data() + row * cols, rows * cols * sizeof(float));
    if (piece.second)
      weight =
          piece.second(oft::ConstMatrixView<float>(weight.data(), weight.rows(), weight.cols()));
    fused.insert(fused.end(), weight.data(), weight.data() + weight.size());
    row += rows;
  }
  EXPECT_EQ(row, v.shape[0]) << v.name;
  std::string bytes(v.bytes, '\0');
  detail::encode(fused.data(), fused.size(), v.dtype, reinterpret_cast<std::byte*>(bytes.data()));
  return bytes;
}

/// diffusers' swap_scale_shift: `shift, scale = w.chunk(2); cat([scale, shift])`.
std::vector<float> swap_scale_shift(const std::vector<float>& w, std::uint64_t rows) {
  const std::size_t half = w.size() / 2;
  EXPECT_EQ(rows % 2, 0u);
  std::vector<float> out(w.begin() + static_cast<std::ptrdiff_t>(half), w.end());
  out.insert(out.end(), w.begin(), w.begin() + static_cast<std::ptrdiff_t>(half));
  return out;
}

/// What merging diffusers' norm_out.linear and converting back gives: `v` swapped into diffusers'
/// order, merged whole, swapped back, encoded in v's dtype.
std::string swapped_merge(const TensorView& v, const PieceMerge& merge) {
  const std::uint64_t rows = v.shape[0], cols = v.numel() / rows;
  std::vector<float> diffusers = swap_scale_shift(v.to_floats(), rows);
  const RowMatrix<float> merged = merge(oft::ConstMatrixView<float>(
      diffusers.data(), static_cast<Index>(rows), static_cast<Index>(cols)));
  std::vector<float> back =
      swap_scale_shift(std::vector<float>(merged.data(), merged.data() + merged.size()), rows);
  std::string bytes(v.bytes, '\0');
  detail::encode(back.data(), back.size(), v.dtype, reinterpret_cast<std::byte*>(bytes.data()));
  return bytes;
}

PieceMerge lycoris_merge(const LycorisAdapter& adapter, const std::string& module, double blend) {
  return [&adapter, module, blend](oft::ConstMatrixView<float> w) {
    return LycorisAdapter::merge(adapter.module(module), w, blend);
  };
}

const DiffusionTarget& target_of(const DiffusionMergeReport& report, const std::string& module) {
  for (const DiffusionTarget& t : report.targets)
    if (t.module == module) return t;
  throw std::logic_error("no target for " + module);
}

TEST(DiffusionMerge, LycorisDiffusersNamesIntoAFluxBflSingleFileSliceTheFusedTensors) {
  ScratchDir scratch;
  // FLUX.1 as Black Forest Labs saves it, hidden size D = 8 (3072 in the real model).
  const std::string qkv = "double_blocks.0.img_attn.qkv.weight";
  const std::string txt_qkv = "double_blocks.0.txt_attn.qkv.weight";
  const std::string linear1 = "single_blocks.0.linear1.weight";
  const std::string linear2 = "single_blocks.0.linear2.weight";
  const std::string norm_out = "final_layer.adaLN_modulation.1.weight";
  write_base(scratch / "flux1-dev.safetensors",
             {{qkv, Dtype::BF16, {24, 8}},
              {"double_blocks.0.img_attn.qkv.bias", Dtype::BF16, {24}},
              {txt_qkv, Dtype::F16, {24, 8}},
              {"double_blocks.0.img_attn.proj.weight", Dtype::BF16, {8, 8}},
              {"double_blocks.0.img_mlp.0.weight", Dtype::BF16, {32, 8}},
              {"double_blocks.0.img_mod.lin.weight", Dtype::BF16, {48, 8}},
              {linear1, Dtype::F32, {56, 8}},
              {linear2, Dtype::BF16, {8, 40}},
              {"single_blocks.0.norm.query_norm.scale", Dtype::BF16, {8}},
              {norm_out, Dtype::F16, {16, 8}},
              {"final_layer.linear.weight", Dtype::F16, {16, 8}},
              {"img_in.weight", Dtype::BF16, {8, 16}},
              {"time_in.in_layer.weight", Dtype::BF16, {8, 16}}},
             12);
  const fs::path adapter_path = lycoris_file(
      scratch.path(), {lycoris_module("lycoris_transformer_blocks_0_attn_to_q", 8, 0),
                       lycoris_module("lycoris_transformer_blocks_0_attn_to_k", 8, 1),
                       lycoris_module("lycoris_transformer_blocks_0_attn_to_v", 8, 2),
                       lycoris_module("lycoris_transformer_blocks_0_attn_add_q_proj", 8, 3),
                       lycoris_module("lycoris_single_transformer_blocks_0_attn_to_q", 8, 4),
                       lycoris_module("lycoris_single_transformer_blocks_0_attn_to_k", 8, 5),
                       lycoris_module("lycoris_single_transformer_blocks_0_attn_to_v", 8, 0),
                       lycoris_module("lycoris_single_transformer_blocks_0_proj_mlp", 32, 1),
                       lycoris_module("lycoris_single_transformer_blocks_0_proj_out", 8, 2),
                       lycoris_module("lycoris_norm_out_linear", 16, 3)});
  DiffusionMergeOptions options;
  options.base = (scratch / "flux1-dev.safetensors").string();
  options.adapter = adapter_path.string();
  options.out = (scratch / "merged.safetensors").string();
  const DiffusionMergeReport report = merge_diffusion(options);
  EXPECT_EQ(report.dialect, Dialect::Lycoris);
  ASSERT_EQ(report.targets.size(), 10u);
  const DiffusionTarget& k = target_of(report, "lycoris_transformer_blocks_0_attn_to_k");
  EXPECT_EQ(k.tensor, qkv);
  EXPECT_EQ(k.row_begin, 8u);
  EXPECT_EQ(k.row_count, 8u);
  const DiffusionTarget& mlp = target_of(report, "lycoris_single_transformer_blocks_0_proj_mlp");
  EXPECT_EQ(mlp.tensor, linear1);
  EXPECT_EQ(mlp.row_begin, 24u);  // after q, k, v of D rows each
  EXPECT_EQ(mlp.row_count, 32u);  // mlp_ratio 4 x D
  EXPECT_TRUE(target_of(report, "lycoris_norm_out_linear").swap_halves);
  EXPECT_FALSE(mlp.swap_halves);

  const LycorisAdapter adapter = LycorisAdapter::load(adapter_path);
  const SafetensorsFile base = SafetensorsFile::open(options.base);
  const SafetensorsFile out = SafetensorsFile::open(options.out);
  const auto m = [&](const std::string& module) { return lycoris_merge(adapter, module, 1.0); };
  const std::string db = "lycoris_transformer_blocks_0_",
                    sb = "lycoris_single_transformer_blocks_0_";
  EXPECT_EQ(bytes_of(out.tensor(qkv)), fused_merge(base.tensor(qkv), {{8, m(db + "attn_to_q")},
                                                                      {8, m(db + "attn_to_k")},
                                                                      {8, m(db + "attn_to_v")}}));
  EXPECT_EQ(bytes_of(out.tensor(txt_qkv)),
            fused_merge(base.tensor(txt_qkv), {{8, m(db + "attn_add_q_proj")}, {16, {}}}));
  EXPECT_EQ(bytes_of(out.tensor(linear1)),
            fused_merge(base.tensor(linear1), {{8, m(sb + "attn_to_q")},
                                               {8, m(sb + "attn_to_k")},
                                               {8, m(sb + "attn_to_v")},
                                               {32, m(sb + "proj_mlp")}}));
  EXPECT_EQ(bytes_of(out.tensor(linear2)),
            fused_merge(base.tensor(linear2), {{8, m(sb + "proj_out")}}));
  EXPECT_EQ(bytes_of(out.tensor(norm_out)),
            swapped_merge(base.tensor(norm_out), m("lycoris_norm_out_linear")));
  // A swap is no rotation within blocks of 4 here: merging the unswapped rows would differ.
  EXPECT_NE(bytes_of(out.tensor(norm_out)),
            fused_merge(base.tensor(norm_out), {{16, m("lycoris_norm_out_linear")}}));
  for (const std::string& changed : {qkv, txt_qkv, linear1, linear2, norm_out})
    EXPECT_NE(bytes_of(out.tensor(changed)), bytes_of(base.tensor(changed))) << changed;
  expect_untouched(base, out, {qkv, txt_qkv, linear1, linear2, norm_out});
  EXPECT_EQ(out.metadata(), base.metadata());
}

TEST(DiffusionMerge, LycorisDiffusersNamesIntoAnSD3SingleFileWithBlend) {
  ScratchDir scratch;
  // SD3 / SD3.5 as Stability AI saves it; joint block 1 is the last (its context stream ends
  // there, and diffusers stores its context norm with the halves swapped).
  const std::string p = "model.diffusion_model.joint_blocks.";
  const std::string x_qkv = p + "0.x_block.attn.qkv.weight";
  const std::string ctx_qkv = p + "0.context_block.attn.qkv.weight";
  const std::string attn2_qkv = p + "0.x_block.attn2.qkv.weight";
  const std::string ctx_mod0 = p + "0.context_block.adaLN_modulation.1.weight";
  const std::string ctx_mod1 = p + "1.context_block.adaLN_modulation.1.weight";
  const std::string fc1 = p + "0.x_block.mlp.fc1.weight";
  write_base(scratch / "sd3.5_medium.safetensors",
             {{x_qkv, Dtype::F16, {24, 8}},
              {p + "0.x_block.attn.qkv.bias", Dtype::F16, {24}},
              {ctx_qkv, Dtype::F16, {24, 8}},
              {attn2_qkv, Dtype::BF16, {24, 8}},
              {ctx_mod0, Dtype::F16, {48, 8}},
              {ctx_mod1, Dtype::F16, {16, 8}},
              {fc1, Dtype::F32, {32, 8}},
              {p + "1.x_block.attn.qkv.weight", Dtype::F16, {24, 8}},
              {p + "1.context_block.attn.qkv.weight", Dtype::F16, {24, 8}},
              {"model.diffusion_model.final_layer.linear.weight", Dtype::F16, {16, 8}},
              {"model.diffusion_model.final_layer.adaLN_modulation.1.weight", Dtype::F16, {16, 8}},
              {"text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
               Dtype::F16,
               {6, 16}},
              {"first_stage_model.decoder.conv_in.weight", Dtype::F16, {4, 4, 3, 3}}},
             13);
  const std::string b0 = "lycoris_transformer_blocks_0_";
  const fs::path adapter_path = lycoris_file(
      scratch.path(),
      {lycoris_module(b0 + "attn_to_k", 8, 0), lycoris_module(b0 + "attn_to_v", 8, 1),
       lycoris_module(b0 + "attn_add_k_proj", 8, 2), lycoris_module(b0 + "attn2_to_q", 8, 3),
       lycoris_module(b0 + "norm1_context_linear", 48, 4),
       lycoris_module("lycoris_transformer_blocks_1_norm1_context_linear", 16, 5),
       lycoris_module(b0 + "ff_net_0_proj", 32, 0)});
  DiffusionMergeOptions options;
  options.base = (scratch / "sd3.5_medium.safetensors").string();
  options.adapter = adapter_path.string();
  options.out = (scratch / "merged.safetensors").string();
  options.blend = 0.5;
  const DiffusionMergeReport report = merge_diffusion(options);
  ASSERT_EQ(report.targets.size(), 7u);
  EXPECT_EQ(target_of(report, b0 + "attn_add_k_proj").tensor, ctx_qkv);
  EXPECT_EQ(target_of(report, b0 + "attn_add_k_proj").row_begin, 8u);
  EXPECT_FALSE(target_of(report, b0 + "norm1_context_linear").swap_halves);
  EXPECT_TRUE(target_of(report, "lycoris_transformer_blocks_1_norm1_context_linear").swap_halves);

  const LycorisAdapter adapter = LycorisAdapter::load(adapter_path);
  const SafetensorsFile base = SafetensorsFile::open(options.base);
  const SafetensorsFile out = SafetensorsFile::open(options.out);
  const auto m = [&](const std::string& module) { return lycoris_merge(adapter, module, 0.5); };
  EXPECT_EQ(bytes_of(out.tensor(x_qkv)),
            fused_merge(base.tensor(x_qkv),
                        {{8, {}}, {8, m(b0 + "attn_to_k")}, {8, m(b0 + "attn_to_v")}}));
  EXPECT_EQ(bytes_of(out.tensor(ctx_qkv)),
            fused_merge(base.tensor(ctx_qkv), {{8, {}}, {8, m(b0 + "attn_add_k_proj")}, {8, {}}}));
  EXPECT_EQ(bytes_of(out.tensor(attn2_qkv)),
            fused_merge(base.tensor(attn2_qkv), {{8, m(b0 + "attn2_to_q")}, {16, {}}}));
  EXPECT_EQ(bytes_of(out.tensor(ctx_mod0)),
            fused_merge(base.tensor(ctx_mod0), {{48, m(b0 + "norm1_context_linear")}}));
  EXPECT_EQ(
      bytes_of(out.tensor(ctx_mod1)),
      swapped_merge(base.tensor(ctx_mod1), m("lycoris_transformer_blocks_1_norm1_context_linear")));
  EXPECT_EQ(bytes_of(out.tensor(fc1)),
            fused_merge(base.tensor(fc1), {{32, m(b0 + "ff_net_0_proj")}}));
  expect_untouched(base, out, {x_qkv, ctx_qkv, attn2_qkv, ctx_mod0, ctx_mod1, fc1});
}

TEST(DiffusionMerge, OneTrainerDiffusersNamesRotateTheInputOfAFusedSlice) {
  ScratchDir scratch;
  // OneTrainer rotates a layer's input: each slice of a fused tensor has the whole input width,
  // so the slice's merge is the separate layer's. D = 16 here (onetrainer_plain's fc1 module
  // holds 2 blocks of b = 8; its to_k module one shared block of b = 4).
  const std::string p = "model.diffusion_model.";
  const std::string linear1 = p + "single_blocks.3.linear1.weight";
  const std::string txt_qkv = p + "double_blocks.2.txt_attn.qkv.weight";
  const std::string norm_out = p + "final_layer.adaLN_modulation.1.weight";
  write_base(scratch / "flux.safetensors",
             {{linear1, Dtype::F16, {112, 16}},
              {txt_qkv, Dtype::BF16, {48, 16}},
              {norm_out, Dtype::F16, {32, 16}},
              {p + "double_blocks.2.img_attn.qkv.weight", Dtype::F16, {48, 16}}},
             14);
  OneTrainerAdapter adapter =
      OneTrainerAdapter::load(dialect_fixture("onetrainer_plain.safetensors"));
  const OneTrainerModule fc1 = adapter.module("lora_te1_text_model_encoder_layers_0_mlp_fc1");
  const OneTrainerModule shared = adapter.module("lora_unet_mid_block_attentions_0_to_k");
  adapter.modules = {fc1, shared, fc1, shared};
  const std::string names[] = {"lora_transformer_single_transformer_blocks_3_proj_mlp",
                               "lora_transformer_single_transformer_blocks_3_attn_to_v",
                               "lora_transformer_transformer_blocks_2_attn_add_k_proj",
                               "lora_transformer_norm_out_linear"};
  for (std::size_t i = 0; i < 4; ++i) adapter.modules[i].name = names[i];
  adapter.save(scratch / "onetrainer.safetensors");
  DiffusionMergeOptions options;
  options.base = (scratch / "flux.safetensors").string();
  options.adapter = (scratch / "onetrainer.safetensors").string();
  options.out = (scratch / "merged.safetensors").string();
  const DiffusionMergeReport report = merge_diffusion(options);
  EXPECT_EQ(report.dialect, Dialect::OneTrainer);
  ASSERT_EQ(report.targets.size(), 4u);

  const OneTrainerAdapter saved = OneTrainerAdapter::load(options.adapter);
  const auto m = [&](const std::string& module) -> PieceMerge {
    return [&saved, module](oft::ConstMatrixView<float> w) {
      const RowMatrix<double> wide = w.map().cast<double>();
      return RowMatrix<float>(OneTrainerAdapter::merge(saved.module(module), oft::view(wide),
                                                       oft::onetrainer::Layer::Linear, 1.0)
                                  .cast<float>());
    };
  };
  const SafetensorsFile base = SafetensorsFile::open(options.base);
  const SafetensorsFile out = SafetensorsFile::open(options.out);
  EXPECT_EQ(bytes_of(out.tensor(linear1)),
            fused_merge(base.tensor(linear1), {{32, {}}, {16, m(names[1])}, {64, m(names[0])}}));
  EXPECT_EQ(bytes_of(out.tensor(txt_qkv)),
            fused_merge(base.tensor(txt_qkv), {{16, {}}, {16, m(names[2])}, {16, {}}}));
  EXPECT_EQ(bytes_of(out.tensor(norm_out)), swapped_merge(base.tensor(norm_out), m(names[3])));
  expect_untouched(base, out, {linear1, txt_qkv, norm_out});
}

TEST(DiffusionMerge, RefusesDiffusersNamesThatDoNotSplitOrOverlap) {
  ScratchDir scratch;
  write_base(scratch / "flux.safetensors",
             {{"double_blocks.0.img_attn.qkv.weight", Dtype::BF16, {24, 8}},
              {"single_blocks.0.linear1.weight", Dtype::BF16, {40, 8}},  // not 7 x 8 rows
              {"final_layer.adaLN_modulation.1.weight", Dtype::BF16, {15, 8}}},
             15);
  DiffusionMergeOptions options;
  options.base = (scratch / "flux.safetensors").string();
  options.out = (scratch / "out.safetensors").string();
  options.adapter =
      lycoris_file(scratch.path(),
                   {lycoris_module("lycoris_single_transformer_blocks_0_attn_to_q", 8, 0)})
          .string();
  expect_refused(options,
                 "'lycoris_single_transformer_blocks_0_attn_to_q' names base tensor "
                 "'single_blocks.0.linear1.weight' (diffusers' name), but FLUX fuses q, k, v");
  expect_refused(options, "this one is 40x8");
  options.adapter =
      lycoris_file(scratch.path(), {lycoris_module("lycoris_norm_out_linear", 16, 0)}).string();
  expect_refused(options, "has 15 rows, which diffusers' swap of its shift and scale halves");
  // A LyCORIS module on the whole fused qkv (its BFL name) and one on its k rows would rotate
  // rows 8 to 15 twice.
  options.adapter =
      lycoris_file(scratch.path(), {lycoris_module("lycoris_double_blocks_0_img_attn_qkv", 24, 0),
                                    lycoris_module("lycoris_transformer_blocks_0_attn_to_k", 8, 1)})
          .string();
  expect_refused(options,
                 "both change base tensor 'double_blocks.0.img_attn.qkv.weight' (rows 8 to 15)");
  options.adapter = lycoris_file(scratch.path(),
                                 {lycoris_module("lycoris_transformer_blocks_0_attn_to_q", 16, 0)})
                        .string();
  expect_refused(options,
                 "rotates 16 output channels, but its base tensor "
                 "'double_blocks.0.img_attn.qkv.weight' has 8 rows there");
}

TEST(DiffusionNames, FluxAndSd3TensorsUnderDiffusersNames) {
  using detail::mmdit_to_diffusers;
  using detail::TransformerLayout;
  const TransformerLayout flux =
      detail::transformer_layout({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                                  "single_blocks.0.linear1.weight"});
  EXPECT_EQ(flux.kind, TransformerLayout::Kind::Flux);
  const TransformerLayout sd3 =
      detail::transformer_layout({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                                  "model.diffusion_model.joint_blocks.23.x_block.attn.qkv.weight"});
  EXPECT_EQ(sd3.kind, TransformerLayout::Kind::Sd3);
  EXPECT_EQ(sd3.last_joint_block, 23);
  // Both at once (or neither) is no model diffusers converts.
  EXPECT_EQ(detail::transformer_layout({"double_blocks.0.x", "joint_blocks.0.x"}).kind,
            TransformerLayout::Kind::None);
  EXPECT_EQ(
      detail::transformer_layout({"model.diffusion_model.input_blocks.1.1.proj_in.weight"}).kind,
      TransformerLayout::Kind::None);

  const auto one = [](const std::vector<detail::DiffusersPiece>& pieces) {
    return pieces.size() == 1 ? pieces.front().name
                              : std::string("(" + std::to_string(pieces.size()) + ")");
  };
  EXPECT_EQ(one(mmdit_to_diffusers("double_blocks.7.txt_attn.proj", 8, 8, flux)),
            "transformer_blocks.7.attn.to_add_out");
  EXPECT_EQ(one(mmdit_to_diffusers("double_blocks.7.img_mlp.2", 8, 32, flux)),
            "transformer_blocks.7.ff.net.2");
  EXPECT_EQ(one(mmdit_to_diffusers("double_blocks.7.txt_mod.lin", 48, 8, flux)),
            "transformer_blocks.7.norm1_context.linear");
  EXPECT_EQ(one(mmdit_to_diffusers("single_blocks.37.modulation.lin", 24, 8, flux)),
            "single_transformer_blocks.37.norm.linear");
  EXPECT_EQ(one(mmdit_to_diffusers("guidance_in.out_layer", 8, 8, flux)),
            "time_text_embed.guidance_embedder.linear_2");
  EXPECT_EQ(one(mmdit_to_diffusers("txt_in", 8, 16, flux)), "context_embedder");
  EXPECT_EQ(one(mmdit_to_diffusers("final_layer.linear", 16, 8, flux)), "proj_out");
  EXPECT_EQ(one(mmdit_to_diffusers("joint_blocks.3.context_block.attn.proj", 8, 8, sd3)),
            "transformer_blocks.3.attn.to_add_out");
  EXPECT_EQ(one(mmdit_to_diffusers("joint_blocks.3.context_block.mlp.fc2", 8, 32, sd3)),
            "transformer_blocks.3.ff_context.net.2");
  EXPECT_EQ(one(mmdit_to_diffusers("joint_blocks.3.x_block.attn2.proj", 8, 8, sd3)),
            "transformer_blocks.3.attn2.to_out.0");
  EXPECT_EQ(one(mmdit_to_diffusers("x_embedder.proj", 8, 64, sd3)), "pos_embed.proj");
  EXPECT_EQ(one(mmdit_to_diffusers("y_embedder.mlp.0", 8, 32, sd3)),
            "time_text_embed.text_embedder.linear_1");
  // Each layout's names only, and nothing for what diffusers has no module of.
  EXPECT_TRUE(mmdit_to_diffusers("joint_blocks.3.x_block.attn.qkv", 24, 8, flux).empty());
  EXPECT_TRUE(mmdit_to_diffusers("double_blocks.0.img_attn.qkv", 24, 8, sd3).empty());
  EXPECT_TRUE(mmdit_to_diffusers("double_blocks.0.img_attn.norm.query_norm", 8, 1, flux).empty());
  // Only SD3's last block swaps its context norm; the final norm always.
  EXPECT_FALSE(mmdit_to_diffusers("joint_blocks.3.context_block.adaLN_modulation.1", 48, 8, sd3)
                   .front()
                   .swap_halves);
  EXPECT_TRUE(mmdit_to_diffusers("joint_blocks.23.context_block.adaLN_modulation.1", 16, 8, sd3)
                  .front()
                  .swap_halves);
  EXPECT_TRUE(mmdit_to_diffusers("final_layer.adaLN_modulation.1", 16, 8, sd3).front().swap_halves);
}

// ---- --variant: diffusers folders with several weights variants ----------------------------

TEST(DiffusionVariant, WeightsFileNamesAsDiffusersWritesThem) {
  using detail::weights_variant;
  EXPECT_EQ(weights_variant("diffusion_pytorch_model.safetensors"), std::string());
  EXPECT_EQ(weights_variant("diffusion_pytorch_model-00001-of-00002.safetensors"), std::string());
  EXPECT_EQ(weights_variant("diffusion_pytorch_model.safetensors.index.json"), std::string());
  EXPECT_EQ(weights_variant("diffusion_pytorch_model.fp16.safetensors"), std::string("fp16"));
  EXPECT_EQ(weights_variant("diffusion_pytorch_model.fp16-00001-of-00002.safetensors"),
            std::string("fp16"));
  EXPECT_EQ(weights_variant("diffusion_pytorch_model.safetensors.index.fp16.json"),
            std::string("fp16"));
  // The older names diffusers still reads.
  EXPECT_EQ(weights_variant("diffusion_pytorch_model-00001-of-00002.fp16.safetensors"),
            std::string("fp16"));
  EXPECT_EQ(weights_variant("diffusion_pytorch_model.safetensors.non_ema.index.json"),
            std::string("non_ema"));
  EXPECT_FALSE(weights_variant("config.json").has_value());
  EXPECT_FALSE(weights_variant("diffusion_pytorch_model.bin").has_value());
}

/// write_diffusers_folder with the U-Net's weights also in the fp16 variant (other values, so
/// that merging the wrong file shows).
void write_variant_folder(const fs::path& root) {
  write_diffusers_folder(root);
  write_base(root / "unet" / "diffusion_pytorch_model.fp16.safetensors",
             {{"conv_in.weight", Dtype::F16, {8, 4, 3, 3}},
              {kToOut, Dtype::F16, {24, 8}},
              {kToQ, Dtype::F16, {16, 8}},
              {kMidProjIn, Dtype::F16, {12, 12, 1, 1}}},
             16);
}

TEST(DiffusionVariant, TwoVariantsAreRefusedWithoutVariantAndOneIsMergedWithIt) {
  ScratchDir scratch;
  write_variant_folder(scratch / "base");
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = dialect_fixture("kohya_k4.safetensors").string();
  options.out = (scratch / "out").string();
  expect_refused(options, "holds its weights in 2 variants (plain, 'fp16'): pass --variant NAME");
  options.variant = "bf16";
  expect_refused(options, "--variant bf16: no component of base");
  options.variant = "fp16.x";
  expect_refused(options, "--variant 'fp16.x' is no diffusers variant name");

  options.variant = "fp16";
  const DiffusionMergeReport report = merge_diffusion(options);
  ASSERT_EQ(report.targets.size(), 3u);
  EXPECT_EQ(report.files, 2u);  // unet's fp16 file, text_encoder's plain one (it has no fp16)
  EXPECT_EQ(report.dropped, std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors"});
  // The merged fp16 file under its own name; the unmerged plain one is not there for diffusers
  // to load without the adapter.
  EXPECT_FALSE(fs::exists(scratch / "out/unet/diffusion_pytorch_model.safetensors"));
  const LycorisAdapter adapter = LycorisAdapter::load(options.adapter);
  const SafetensorsFile base =
      SafetensorsFile::open(scratch / "base/unet/diffusion_pytorch_model.fp16.safetensors");
  const SafetensorsFile out =
      SafetensorsFile::open(scratch / "out/unet/diffusion_pytorch_model.fp16.safetensors");
  const std::string module = "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
  EXPECT_EQ(bytes_of(out.tensor(kToQ)),
            fused_merge(base.tensor(kToQ), {{16, lycoris_merge(adapter, module, 1.0)}}));
  expect_untouched(base, out, {kToOut, kToQ, kMidProjIn});
  for (const char* same : {"vae/diffusion_pytorch_model.safetensors", "model_index.json",
                           "text_encoder/model.safetensors", "unet/config.json"})
    EXPECT_EQ(oft_io_test::read_bytes(scratch / "base" / same),
              oft_io_test::read_bytes(scratch / "out" / same))
        << same;

  // --variant picks a folder's files; a single file has none to pick.
  options.base = (scratch / "base/unet/diffusion_pytorch_model.fp16.safetensors").string();
  options.out = (scratch / "single.safetensors").string();
  expect_refused(options, "--variant fp16 picks the weights files of a diffusers folder");
}

TEST(DiffusionVariant, ShardedVariantWithItsIndexBesideThePlainFile) {
  ScratchDir scratch;
  const fs::path unet = scratch / "base/unet";
  write_base(unet / "diffusion_pytorch_model.safetensors",
             {{kToOut, Dtype::F32, {24, 8}}, {kToQ, Dtype::F32, {16, 8}}}, 17);
  write_base(unet / "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
             {{kToOut, Dtype::F16, {24, 8}}}, 18);
  write_base(unet / "diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
             {{kToQ, Dtype::F16, {16, 8}}}, 19);
  oft_io_test::write_bytes(
      unet / "diffusion_pytorch_model.safetensors.index.fp16.json",
      std::string("{\"metadata\": {\"total_size\": 640}, \"weight_map\": {\"") + kToOut +
          "\": \"diffusion_pytorch_model.fp16-00001-of-00002.safetensors\", \"" + kToQ +
          "\": \"diffusion_pytorch_model.fp16-00002-of-00002.safetensors\"}}\n");
  const fs::path adapter_path = renamed_lycoris(
      scratch.path(), {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"});
  DiffusionMergeOptions options;
  options.base = (scratch / "base").string();
  options.adapter = adapter_path.string();
  options.out = (scratch / "out").string();
  expect_refused(options, "pass --variant NAME");
  options.variant = "fp16";
  const DiffusionMergeReport report = merge_diffusion(options);
  EXPECT_EQ(report.files, 2u);
  EXPECT_EQ(report.dropped, std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors"});
  EXPECT_EQ(oft_io_test::read_bytes(unet / "diffusion_pytorch_model.safetensors.index.fp16.json"),
            oft_io_test::read_bytes(
                scratch / "out/unet/diffusion_pytorch_model.safetensors.index.fp16.json"));
  const LycorisAdapter adapter = LycorisAdapter::load(adapter_path);
  const SafetensorsFile base =
      SafetensorsFile::open(unet / "diffusion_pytorch_model.fp16-00002-of-00002.safetensors");
  const SafetensorsFile out = SafetensorsFile::open(
      scratch / "out/unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors");
  EXPECT_EQ(bytes_of(out.tensor(kToQ)),
            fused_merge(base.tensor(kToQ), {{16, [&](oft::ConstMatrixView<float> w) {
                                               return LycorisAdapter::merge(adapter.modules[0], w,
                                                                            1.0);
                                             }}}));
  EXPECT_EQ(
      oft_io_test::read_bytes(unet / "diffusion_pytorch_model.fp16-00001-of-00002.safetensors"),
      oft_io_test::read_bytes(scratch /
                              "out/unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors"));
  EXPECT_FALSE(fs::exists(scratch / "out/unet/diffusion_pytorch_model.safetensors"));
}

}  // namespace
