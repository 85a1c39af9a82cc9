// oft merge of LyCORIS files into a real diffusers U-Net, against LyCORIS's own merge
// (fixtures/lycoris_unet, made by make_lycoris_unet_fixtures.py with lycoris-lora 4.1.3 and
// diffusers 0.42.1): a seeded UNet2DConditionModel saved by save_pretrained, diag-OFT and BOFT
// adapters trained on it through LyCORIS's forward and saved by LyCORIS's save_weights, and
// LyCORIS's create_lycoris_from_weights + merge_to(s) of each file into a fresh copy. Each case
// merges the committed folder with oft::io::merge_diffusion at blend = s (LyCORIS's multiplier is
// oft's --blend) and requires: every adapter module placed on the tensor LyCORIS adapted (its
// LyCORIS name read back to the diffusers path), every adapted weight (Linear, Conv2d 3x3 and
// Conv2d 1x1, kernels seen as [out, in kh kw]) within the float rounding bound below of LyCORIS's,
// every other tensor and file byte-identical.
//
// The bound, per element (i, j) of W' = diag(r) T W (u = 2^-24; derived for the same two float
// computations in tests/dialects: lycoris_fixtures.hpp for diag-OFT, test_lycoris_boft.cpp for
// BOFT, before any difference was looked at):
//   diag-OFT: 2 (4b + 8) u kappa_beta cs (1 + 2|r_i| + |r_i - 1|) ||w_beta,j||_2, where w_beta,j
//             is column j of W over the b rows of i's block (a merged element is a b-term sum of
//             them, so the fan-in of the layer does not enter: the kernel's in kh kw columns are
//             merged one by one), kappa_beta = sqrt(1 + ||Q_beta||_F^2) >= cond(I - Q_beta) (the
//             float solve or inverse that forms R), cs = |s| + |1 - s| (the blend);
//   BOFT:     2 (m (4b + 8) + 4) u kappa cs^m (1 + 2|r_i| + |r_i - 1|) ||w_j||_2, w_j the whole
//             column (the m stages mix all out rows), kappa the largest over the m N blocks.
// The bound is not vacuous here: each adapted weight moves from the base by far more than it
// (checked below, per case), so an identity merge, a dropped rescale or a wrong layout fails it.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off.
// clang-format off
#include <oft/io/diffusion_merge.hpp>

#include <gtest/gtest.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "io_test_support.hpp"
#include "lycoris_fixtures.hpp"

#ifndef OFT_DIFFUSION_FIXTURES_DIR
#error "tests/diffusion/CMakeLists.txt defines OFT_DIFFUSION_FIXTURES_DIR"
#endif

namespace {

using namespace oft::io;
using oft::Index;
using oft_dialects_test::boft_merge_tolerance;
using oft_dialects_test::Matrix;
using oft_dialects_test::MatrixD;
using oft_io_test::ScratchDir;
namespace fs = std::filesystem;

fs::path unet_fixture(const std::string& name) {
  return fs::path(OFT_DIFFUSION_FIXTURES_DIR) / "lycoris_unet" / name;
}

const char* const kUnetFile = "unet/diffusion_pytorch_model.safetensors";

/// A weight of any rank as [dim 0, the rest], in float.
Matrix flat(const TensorView& t) {
  const auto rows = static_cast<Index>(t.shape.at(0));
  const std::vector<float> v = t.to_floats();
  Matrix m(rows, static_cast<Index>(v.size()) / rows);
  std::copy(v.begin(), v.end(), m.data());
  return m;
}

MatrixD merge_tolerance(const LycorisDiagOftModule& m, double s, const Matrix& w) {
  return m.boft() ? boft_merge_tolerance(m.boft_op(s), w)
                  : oft_dialects_test::merge_tolerance(m.diag_oft(s), w);
}

/// Worst difference to LyCORIS per layer kind, over the case's multipliers.
struct Worst {
  double diff = 0.0, ratio = 0.0;
  int tensors = 0;
};

/// One fixture case merged at each of its multipliers; `worst` gets the worst per layer kind.
/// (void: GoogleTest's ASSERT_* return from the function.)
void check_case(const std::string& name, bool default_options_at_one,
                std::map<std::string, Worst>& worst) {
  const LycorisAdapter adapter = LycorisAdapter::load(unet_fixture(name + ".safetensors"));
  const SafetensorsFile expected =
      SafetensorsFile::open(unet_fixture(name + "_expected.safetensors"));
  const SafetensorsFile base = SafetensorsFile::open(unet_fixture("base") / kUnetFile);
  const auto meta_of = [&](const char* key) {
    return nlohmann::json::parse(expected.metadata().at(key));
  };
  EXPECT_EQ(expected.metadata().at("lycoris_version"), "4.1.3");
  EXPECT_EQ(expected.metadata().at("diffusers_version"), "0.42.1");
  const nlohmann::json modules = meta_of("modules");
  const std::vector<double> multipliers = meta_of("multipliers").get<std::vector<double>>();
  EXPECT_EQ(modules.size(), adapter.modules.size());

  std::map<std::string, std::string> module_of;  // base tensor -> LyCORIS module
  for (const auto& [module, info] : modules.items())
    module_of[info.at("tensor").get<std::string>()] = module;
  double signal = 1e300;  // min over changed weights of max |LyCORIS's merge - base| / bound
  for (std::size_t i = 0; i < multipliers.size(); ++i) {
    const double s = multipliers[i];
    ScratchDir scratch;
    DiffusionMergeOptions options;
    options.base = unet_fixture("base").string();
    options.adapter = unet_fixture(name + ".safetensors").string();
    options.out = (scratch / "out").string();
    // LyCORIS's default multiplier is 1, oft's default merge is the adapter itself: a run with
    // no option must be LyCORIS's merge_to(1.0) too.
    if (!(default_options_at_one && s == 1.0)) options.blend = s;
    const DiffusionMergeReport report = merge_diffusion(options);
    EXPECT_EQ(report.dialect, Dialect::Lycoris);
    EXPECT_EQ(report.files, 1u);
    EXPECT_EQ(report.other_files, 1u);  // unet/config.json
    EXPECT_EQ(oft_io_test::read_bytes(scratch / "out" / "unet" / "config.json"),
              oft_io_test::read_bytes(unet_fixture("base") / "unet" / "config.json"));
    // Every module on the tensor LyCORIS adapted, all of its rows.
    EXPECT_EQ(report.targets.size(), modules.size());
    for (const DiffusionTarget& t : report.targets) {
      ASSERT_TRUE(modules.contains(t.module)) << t.module;
      EXPECT_EQ(t.tensor, "unet/" + modules.at(t.module).at("tensor").get<std::string>())
          << t.module;
      EXPECT_EQ(t.row_begin, 0u) << t.module;
      EXPECT_EQ(t.row_count, modules.at(t.module).at("out").get<std::uint64_t>()) << t.module;
    }

    const SafetensorsFile out = SafetensorsFile::open(scratch / "out" / kUnetFile);
    ASSERT_EQ(out.tensor_names(), base.tensor_names());
    for (const std::string& tensor : base.tensor_names()) {
      const TensorView got_view = out.tensor(tensor), base_view = base.tensor(tensor);
      EXPECT_EQ(got_view.dtype, base_view.dtype) << tensor;
      EXPECT_EQ(got_view.shape, base_view.shape) << tensor;
      const auto it = module_of.find(tensor);
      if (it == module_of.end()) {  // a bias, a norm: copied
        EXPECT_EQ(std::string(reinterpret_cast<const char*>(got_view.data), got_view.bytes),
                  std::string(reinterpret_cast<const char*>(base_view.data), base_view.bytes))
            << tensor;
        continue;
      }
      const Matrix w = flat(base_view), got = flat(got_view);
      const Matrix want = flat(expected.tensor("merged." + std::to_string(i) + "." + tensor));
      const MatrixD tol = merge_tolerance(adapter.module(it->second), s, w);
      const oft_dialects_test::Difference d = oft_dialects_test::compare(got, want, tol);
      EXPECT_LE(d.worst_ratio, 1.0) << name << " s=" << s << " " << tensor << ": worst " << d.worst;
      Worst& k = worst[modules.at(it->second).at("kind").get<std::string>()];
      k.diff = std::max(k.diff, d.worst);
      k.ratio = std::max(k.ratio, d.worst_ratio);
      ++k.tensors;
      // What the adapter does to this weight, in bounds (b = 1 without rescale does nothing).
      const oft_dialects_test::Difference moved = oft_dialects_test::compare(w, want, tol);
      if (moved.worst > 0.0) signal = std::min(signal, moved.worst_ratio);
    }
  }
  // Measured: LyCORIS's merge moves every changed weight by at least 2,260 bounds (BOFT's
  // smallest; diag-OFT's 41,000, 15,900 in the defaults case, trained 3 steps from zero), so the
  // bound tells a merge from the base by three orders of magnitude; 100 keeps that an assertion.
  EXPECT_GT(signal, 100.0) << name;
  const nlohmann::json forward = meta_of("forward");
  for (const auto& [kind, k] : worst)
    std::printf("[ parity ] %-18s %-10s worst %.3g (%.3f of the bound), %d merged weights\n",
                name.c_str(), kind.c_str(), k.diff, k.ratio, k.tensors);
  std::printf(
      "[ parity ] %-18s base vs LyCORIS's merge: >= %.3g bounds; LyCORIS forward vs its "
      "merged U-Net (script): %s\n",
      name.c_str(), signal, forward.dump().c_str());
}

TEST(LycorisUnet, DiagOftWithRescaleAndConstraintEqualsLycorisMergeTo) {
  std::map<std::string, Worst> worst;
  check_case("diag_oft", false, worst);
  EXPECT_EQ(worst.size(), 3u);  // Linear, Conv2d 3x3, Conv2d 1x1
}

TEST(LycorisUnet, BoftWithRescaleAndConstraintEqualsLycorisMergeTo) {
  std::map<std::string, Worst> worst;
  check_case("boft", false, worst);
  EXPECT_EQ(worst.size(), 3u);
}

TEST(LycorisUnet, DiagOftTrainedFromLycorisDefaultsEqualsLycorisMergeTo) {
  std::map<std::string, Worst> worst;
  check_case("diag_oft_defaults", true, worst);
  EXPECT_EQ(worst.size(), 3u);
}

// The constraint decisions recorded by the script are LyCORIS's own; oft must take the same
// ones (a module near the threshold would make the merge comparison meaningless there).
TEST(LycorisUnet, ConstraintDecisionsEqualLycorisPerModule) {
  for (const std::string name : {"diag_oft", "boft"}) {
    const LycorisAdapter adapter = LycorisAdapter::load(unet_fixture(name + ".safetensors"));
    const SafetensorsFile expected =
        SafetensorsFile::open(unet_fixture(name + "_expected.safetensors"));
    const nlohmann::json modules = nlohmann::json::parse(expected.metadata().at("modules"));
    int active = 0, inactive = 0;
    for (const auto& [module, info] : modules.items()) {
      const LycorisDiagOftModule& m = adapter.module(module);
      const bool binds =
          m.boft() ? m.boft_op().constraint().active : m.diag_oft().constraint().active;
      EXPECT_EQ(binds, info.at("constraint_active").get<bool>()) << name << " " << module;
      (binds ? active : inactive) += 1;
    }
    EXPECT_GT(active, 0) << name;
    EXPECT_GT(inactive, 0) << name;
  }
}

}  // namespace
