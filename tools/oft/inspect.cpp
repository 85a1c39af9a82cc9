// `oft inspect`: the report on one adapter of any dialect, as a table or JSON.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <oft/io/adapter_inspect.hpp>
#include <oft/io/dialect.hpp>
#include <oft/io/dialect_convert.hpp>
#include <oft/io/inspect_any.hpp>
#include <oft/io/lycoris_adapter.hpp>
#include <oft/io/onetrainer_adapter.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"

namespace oft_tool {
namespace {

std::string yes_no(bool value) { return value ? "yes" : "no"; }

void print_table(const std::string& path, const oft::io::AdapterReport& r) {
  std::printf("%s\n", path.c_str());
  std::printf("  PEFT %s, policy %s (%s",
              r.peft_version.empty() ? "< 0.18 (no peft_version)" : r.peft_version.c_str(),
              r.policy.c_str(), r.polynomial.c_str());
  if (r.policy != "cayley") {
    std::printf(", T = %d", r.num_cayley_neumann_terms);
    if (r.truncation_k >= 0) std::printf(" -> R_k with k = %d", r.truncation_k);
  }
  std::printf("), coft %s", yes_no(r.coft).c_str());
  if (r.coft) std::printf(" (eps %g)", r.eps);
  std::printf(", block_share %s\n\n", yes_no(r.block_share).c_str());
  int width = 28;  // the module column fits the longest name (BERT's run past 40 characters)
  for (const auto& m : r.modules) width = std::max(width, static_cast<int>(m.name.size()));
  std::printf("  %-*s %-9s %5s %4s  %-19s %-19s %-19s %-8s %-9s %s\n", width, "module", "kind",
              "gens", "b", "rho worst/median", "orth. err worst/med", "dist. Cayley w/med",
              "diverges", "k for tol", "served B");
  for (const auto& m : r.modules) {
    char k[32];
    if (m.terms_for_tolerance >= 0)
      std::snprintf(k, sizeof k, "%d", m.terms_for_tolerance);
    else
      std::snprintf(k, sizeof k, "> %d", oft::kMaxNeumannTerms);  // rho too close to 1 (or >= 1)
    std::printf("  %-*s %-9s %5lld %4lld  %8.2e/%8.2e   %8.2e/%8.2e   %8.2e/%8.2e   %-8s %-9s %llu\n",
                width, m.name.c_str(), m.kind.c_str(), static_cast<long long>(m.generators),
                static_cast<long long>(m.block_size), m.rho.worst, m.rho.median,
                m.orthogonality.worst, m.orthogonality.median, m.distance.worst, m.distance.median,
                yes_no(m.diverges).c_str(), k, static_cast<unsigned long long>(m.served_bytes));
  }
  std::printf("\n  served B: what serving keeps resident per module (oft::AdapterBank: float32 R "
              "blocks); %llu bytes for the whole adapter",
              static_cast<unsigned long long>(r.served_bytes()));
  std::printf(
      "\n  k for tol: smallest Cayley-Neumann k with ||R - R_k||_2 = rho^(k+1) <= %g at the "
      "worst rho\n",
      r.tolerance);
}

void print_family_table(const std::string& path, const oft::io::AdapterReport& r) {
  const bool boft = r.family == "BOFT";
  std::printf("%s\n", path.c_str());
  std::printf("  PEFT %s adapter%s%s: %s\n\n", r.family.c_str(),
              r.peft_version.empty() ? "" : ", peft ", r.peft_version.c_str(),
              boft ? "R = butterfly product of m factors of N exact Cayley blocks of b, output "
                     "scaled by boft_s"
                   : "R = product of r Householder reflections (apply_GS: Gram-Schmidt first)");
  int width = 28;
  for (const auto& m : r.modules) width = std::max(width, static_cast<int>(m.name.size()));
  if (boft)
    std::printf("  %-*s %6s %6s %3s %6s %4s %10s %10s %10s  %-19s %-19s %s\n", width, "module", "d",
                "n_out", "m", "N", "b", "params", "stored B", "dense B", "orth. err worst/med",
                "rho worst/median", "boft_s min/max");
  else
    std::printf("  %-*s %6s %5s %-8s %10s %10s %10s  %s\n", width, "module", "d", "r", "apply_GS",
                "params", "stored B", "dense B", "orth. err");
  for (const auto& m : r.modules) {
    const auto n = [](oft::Index v) { return static_cast<long long>(v); };
    const auto b = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
    if (boft)
      std::printf(
          "  %-*s %6lld %6lld %3lld %6lld %4lld %10lld %10llu %10llu  %8.2e/%8.2e   %8.2e/%8.2e   "
          "%.4g/%.4g\n",
          width, m.name.c_str(), n(m.features), n(m.out_features), n(m.factors), n(m.blocks),
          n(m.block_size), n(m.parameters), b(m.stored_bytes), b(m.dense_bytes),
          m.orthogonality.worst, m.orthogonality.median, m.rho.worst, m.rho.median, m.scale_min,
          m.scale_max);
    else
      std::printf("  %-*s %6lld %5lld %-8s %10lld %10llu %10llu  %8.2e\n", width, m.name.c_str(),
                  n(m.features), n(m.reflections), yes_no(m.gram_schmidt).c_str(), n(m.parameters),
                  b(m.stored_bytes), b(m.dense_bytes), m.orthogonality.worst);
  }
  std::printf(
      "\n  orth. err: ||R^T R - I||_2 in double%s; dense B: a d x d float32 rotation, which oft "
      "never forms\n",
      boft ? " over the m N blocks" : " of the whole product");
}

void print_lycoris_table(const std::string& path, const std::vector<oft::io::LycorisModuleReport>& r) {
  std::printf("%s\n", path.c_str());
  const bool kohya = !r.empty() && r.front().dialect == "kohya-oft";
  bool diag = false, boft = false;
  for (const auto& m : r) (m.stages > 0 ? boft : diag) = true;
  if (diag || kohya)
    std::printf("  %s: output channels rotated, Q = B - B^T, R = (I + Q)(I - Q)^-1; "
                "||Q||_F <= alpha * out over all blocks (%s); multiplier s blends s R + (1 - s) I\n",
                kohya ? "kohya sd-scripts OFT" : "LyCORIS diag-OFT",
                kohya ? "kohya's rule: always applied, alpha = 0 makes R ~ I" : "alpha <= 0: off");
  if (boft)
    std::printf("  LyCORIS BOFT: output channels rotated by m butterfly stages W' = T_(m-1)...T_0 W, "
                "T_i = P_i^T blockdiag(R) P_i (R, not R^T), Q = B - B^T; ||Q||_F <= alpha * out over "
                "all m N blocks (alpha <= 0: off); the multiplier blends every stage\n");
  std::printf("\n");
  int width = 28;
  for (const auto& m : r) width = std::max(width, static_cast<int>(m.name.size()));
  std::printf("  %-*s %6s %3s %5s %4s %9s %9s %-7s %9s %9s %9s  %s\n", width, "module", "out", "m", "k|N",
              "b", "||Q||_F", "alpha*out", "binds", "rho", "orth. s=1", "s=1/2", "rescale min/max");
  for (const auto& m : r) {
    char rescale[48] = "-";
    if (m.rescaled) std::snprintf(rescale, sizeof rescale, "%.4g/%.4g", m.rescale_min, m.rescale_max);
    char radius[16] = "off";
    if (m.radius > 0.0 || kohya) std::snprintf(radius, sizeof radius, "%9.3g", m.radius);
    char stages[24] = "-";
    if (m.stages > 0) std::snprintf(stages, sizeof stages, "%lld", static_cast<long long>(m.stages));
    std::printf("  %-*s %6lld %3s %5lld %4lld %9.3g %9s %-7s %9.3g %9.2e %9.2e  %s\n", width,
                m.name.c_str(), static_cast<long long>(m.out_features), stages,
                static_cast<long long>(m.blocks), static_cast<long long>(m.block_size), m.norm,
                radius, m.radius > 0.0 || kohya ? yes_no(m.constraint_active).c_str() : "-", m.rho,
                m.orthogonality, m.blend_half, rescale);
  }
  std::printf("\n  m: BOFT stages (- for diag-OFT); k|N: blocks (per stage for BOFT); binds: ||Q||_F > "
              "alpha * out, so the trainer scales Q onto that ball; s=1/2: ||M^T M - I||_2 of the "
              "multiplier 0.5 per block, a blend that is no rotation\n");
}

void print_onetrainer_table(const std::string& path,
                            const std::vector<oft::io::OneTrainerModuleReport>& r) {
  std::printf("%s\n", path.c_str());
  std::printf(
      "  OneTrainer / ComfyUI-OFTv2 OFT: input side, Linear W' = W R^T, Conv2d W' = W_flat R "
      "(c*kh*kw input); R = 5 Neumann terms, or CANS where cans_oft; scaled_oft divides "
      "theta by 2 sqrt(b - 1); clipped_oft clips ||Q||_2 (oft: exact norm, the loader: a "
      "2-step power iteration from a random start); strength s blends W + s (W' - W)\n\n");
  int width = 28;
  for (const auto& m : r) width = std::max(width, static_cast<int>(m.name.size()));
  std::printf("  %-*s %4s %4s %-6s %-6s %7s %-4s %9s %7s %9s  %s\n", width, "module", "r", "b",
              "shared", "scaled", "clip", "cans", "rho", "clipped", "orth.", "note");
  for (const auto& m : r) {
    char clip[16] = "-";
    if (m.clipped) std::snprintf(clip, sizeof clip, "%.3g", m.clip);
    std::printf("  %-*s %4lld %4lld %-6s %-6s %7s %-4s %9.3g %7lld %9.2e  %s\n", width,
                m.name.c_str(), static_cast<long long>(m.rows),
                static_cast<long long>(m.block_size), yes_no(m.shared).c_str(),
                yes_no(m.scaled).c_str(), clip, yes_no(m.cans).c_str(), m.rho,
                static_cast<long long>(m.clipped_blocks), m.orthogonality_error, m.note.c_str());
    if (m.peft_change >= 0)
      std::printf("  %-*s max ||R_loaded - R_PEFT||_F over blocks: %.3g\n", width, "",
                  m.peft_change);
  }
  std::printf(
      "\n  rho: max ||Q||_2 after scaled_oft, before the clip; clipped: blocks with rho above "
      "the clip radius; orth.: max ||R^T R - I||_2 of the loaded R\n");
}

/// The same columns for every dialect (oft::io::summarize), after the dialect's own table.
void print_summary(const std::vector<oft::io::DialectModuleSummary>& rows) {
  int width = 28;
  for (const auto& m : rows) width = std::max(width, static_cast<int>(m.name.size()));
  std::printf("\n  every dialect's terms:\n  %-*s %-6s %4s %-9s %9s %9s  %s\n", width, "module",
              "side", "b", "binding", "rho", "orth.", "traps");
  for (const auto& m : rows) {
    char binding[24] = "-";
    if (m.binding >= 0) std::snprintf(binding, sizeof binding, "%.3g", m.binding);  // or inf
    std::printf("  %-*s %-6s %4lld %-9s %9.3g %9.2e  %s\n", width, m.name.c_str(), m.side.c_str(),
                static_cast<long long>(m.block_size), binding, m.rho, m.orthogonality_error,
                m.traps.empty() ? "-" : m.traps.c_str());
  }
  std::printf("\n  side: input W' = W R^T, output W' = R^T W; binding: the constrained norm over "
              "its bound (> 1: the constraint acts; - none); rho: max ||Q_i||_2; orth.: max "
              "||R^T R - I||_2 of what the loader applies\n");
}

}  // namespace

void add_inspect(CLI::App& app, InspectCommand& command) {
  command.app = app.add_subcommand(
      "inspect",
      "Report on an adapter of any dialect: a PEFT OFT, BOFT or HRA directory (peft_type "
      "decides), or a LyCORIS diag-OFT or BOFT, kohya OFT or OneTrainer .safetensors file");
  command.app
      ->add_option("ADAPTER", command.adapter,
                   "directory with adapter_config.json and adapter_model.safetensors, or a "
                   "LyCORIS, kohya or OneTrainer OFT .safetensors file")
      ->required();
  command.app->add_flag("--json", command.json, "machine-readable output");
  command.app
      ->add_option("--tolerance", command.tolerance,
                   "distance to exact Cayley for the 'k for tol' column")
      ->check(CLI::PositiveNumber);
  add_dialect_option(*command.app, command.dialect,
                     "read the adapter as this dialect instead of detecting it by its keys: "
                     "peft-oft, peft-boft, peft-hra, lycoris, kohya, onetrainer");
}

int run_inspect(const InspectCommand& command) {
  const std::string& adapter_path = command.adapter;
  const bool as_json = command.json;
  try {
    std::optional<oft::io::Dialect> dialect;
    if (!command.dialect.empty()) dialect = oft::io::parse_dialect(command.dialect);
    const oft::io::AnyAdapterReport report =
        oft::io::inspect_any_adapter(adapter_path, dialect, command.tolerance);
    if (as_json) {
      std::cout << to_json(report).dump(2) << "\n";
      return 0;
    }
    if (report.lycoris)
      print_lycoris_table(adapter_path, *report.lycoris);
    else if (report.onetrainer)
      print_onetrainer_table(adapter_path, *report.onetrainer);
    else if (report.peft->family != "OFT")
      print_family_table(adapter_path, *report.peft);
    else
      print_table(adapter_path, *report.peft);
    print_summary(report.summary);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft inspect: %s\n", without_prefix(e).c_str());
    return 1;
  }
  return 0;
}

}  // namespace oft_tool
