// The ComfyUI comparison table (docs/dialects.md section 6), recomputed in C++: ComfyUI's
// diag-OFT merge is LyCORIS's with the radius alpha instead of alpha * out, the multiplier s^2
// instead of s, and no rescale, i.e. oft's DiagOft(k, b, blocks, alpha / out, {}, s * s). Its
// errors against each fixture's stored merge must be those comfyui_reference.py (a separate
// torch implementation of ComfyUI's code) recorded in comfyui_comparison.json; for the kohya
// files the row is "raw_alpha" (ComfyUI maps no kohya key, so only that variant computes
// anything): DiagOft(alpha / out, multiplier s) with LyCORIS's rule.

#include <fstream>
#include <map>
#include <utility>

#include "lycoris_fixtures.hpp"

namespace oft_dialects_test {
namespace {

struct Errors {
  double max_abs = 0.0, rel_fro = 0.0;
};

TEST(ComfyUiTable, DiagOftRowsMatchTheReferenceJson) {
  std::ifstream in(fixture("../comfyui_comparison.json"));
  ASSERT_TRUE(in) << "tests/dialects/comfyui_comparison.json";
  const nlohmann::json table = nlohmann::json::parse(in);
  std::map<std::pair<std::string, double>, Errors> recorded;
  for (const auto& cases : {std::pair<std::string, std::string>{"lycoris_plain_b4", "comfyui"},
                            {"lycoris_constrained_b8", "comfyui"},
                            {"lycoris_rescaled_b4", "comfyui"},
                            {"kohya_k4", "raw_alpha"},
                            {"kohya_alpha0", "raw_alpha"}}) {
    for (const auto& row : table.at("rows"))
      if (row.at("fixture") == cases.first && row.at("variant") == cases.second)
        recorded[{cases.first, row.at("strength").get<double>()}] = {
            row.at("max_abs").get<double>(), row.at("rel_fro").get<double>()};
  }
  int compared = 0;
  for (const std::string stem : {"lycoris_plain_b4", "lycoris_constrained_b8",
                                 "lycoris_rescaled_b4", "kohya_k4", "kohya_alpha0"}) {
    SCOPED_TRACE(stem);
    const LycorisCase c = LycorisCase::load(stem);
    const std::vector<double> strengths = c.multipliers();
    for (size_t i = 0; i < strengths.size(); ++i) {
      const double s = strengths[i];
      Errors worst;
      for (const std::string& path : c.modules()) {
        const auto& m = c.module(path);
        const Matrix w = c.matrix(path + ".weight");
        const Matrix exact = c.matrix(path + ".merged." + std::to_string(i));
        const double out = static_cast<double>(m.blocks * m.block_size);
        const oft::lycoris::DiagOft<float> comfy(m.blocks, m.block_size, m.oft_blocks.data(),
                                                 m.alpha / out, {}, c.kohya() ? s : s * s);
        const MatrixD diff = (comfy.merge(oft::view(w)) - exact).cast<double>();
        worst.max_abs = std::max(worst.max_abs, diff.cwiseAbs().maxCoeff());
        worst.rel_fro = std::max(worst.rel_fro, diff.norm() / exact.cast<double>().norm());
      }
      const auto it = recorded.find({stem, s});
      ASSERT_NE(it, recorded.end()) << "no row for s=" << s;
      // Both sides are float computations of the same merge, each within the parity bound of
      // lycoris_fixtures.hpp of the exact value: about (4b + 8) u ||w||_2 per entry, below
      // 1e-5 for these weights (|w| < 1, b <= 6); the errors they report agree within that.
      EXPECT_NEAR(worst.max_abs, it->second.max_abs, 1e-5) << "s=" << s;
      EXPECT_NEAR(worst.rel_fro, it->second.rel_fro, 1e-5) << "s=" << s;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 25);
}

}  // namespace
}  // namespace oft_dialects_test
