// The `oft` command-line tool: argument parsing, the progress bar and the messages, over the
// library functions that do the work (the C++ tests and Python call the same ones).
//   oft inspect ADAPTER [--json] [--tolerance TOL] [--dialect NAME]
//       the adapter's dialect found by its keys (oft::io::detect_dialect, io/dialect.hpp; refused
//       when none or two match), or named: peft-oft, peft-boft, peft-hra, lycoris, kohya,
//       onetrainer. per module of a PEFT OFT adapter directory: generators, b, shared, rho =
//       ||Q||_2, the orthogonality error and the distance to exact Cayley of every block under the
//       adapter's own policy (worst and median), whether a Neumann series diverges, and the k a
//       tolerance needs; a table, or JSON for scripts (oft::io::inspect_adapter,
//       io/adapter_inspect.hpp). A PEFT BOFT or HRA adapter: m, N, b or r, apply_GS, parameters,
//       bytes, orthogonality. A LyCORIS diag-OFT or BOFT, or kohya OFT file (FILE.safetensors, not
//       a directory): m, k, b, the constraint and how near it binds, rho, orthogonality at s = 1
//       and of the blend at s = 1/2, rescale (oft::io::inspect_lycoris, io/lycoris_adapter.hpp). A
//       OneTrainer / ComfyUI-OFTv2 file: r, b, shared, the scaled_oft / clipped_oft / cans_oft
//       flags, rho, the blocks the clip binds on, the loaded R's orthogonality error
//       (oft::io::inspect_onetrainer, io/onetrainer_adapter.hpp).
//   oft merge --base MODEL_DIR --adapter ADAPTER_DIR --out DIR [--strength S] [--dtype D] [--force]
//       [--dialect NAME] (PEFT dialects only: others are refused, they merge through the library)
//   oft unmerge (the same options): a Hugging Face model directory with the adapter folded in
//       (or taken out: the true inverse), streamed tensor by tensor (oft::io::merge_model,
//       io/model_merge.hpp); OFT, BOFT or HRA adapters (BOFT and HRA without --strength).
//   oft convert --adapter ADAPTER_DIR --out DIR [--expand-block-share --base MODEL_DIR]
//       [--generators-dtype f32|bf16|f16] [--to-current-polynomial] [--allow-change] [--force]
//       the adapter in another form PEFT loads; a change of R is measured and refused unless
//       allowed (oft::io::convert_adapter, io/adapter_convert.hpp).
// Bad input: one line on stderr naming the file and the values, exit status 1 (2 for bad
// arguments, from CLI11, or an unknown --dialect).

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <oft/io/adapter_convert.hpp>
#include <oft/io/adapter_inspect.hpp>
#include <oft/io/dialect.hpp>
#include <oft/io/lycoris_adapter.hpp>
#include <oft/io/model_merge.hpp>
#include <oft/io/onetrainer_adapter.hpp>
#include <optional>
#include <stdexcept>
#include <string>

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

/// A one-line progress bar on a terminal (stderr): "[#####.....] 12/40 tensors  1.2/3.4 GB  name".
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  void operator()(const oft::io::MergeProgress& p) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    const bool last = p.tensors_done == p.tensors_total;
    if (!last && now - shown_ < std::chrono::milliseconds(100)) return;
    shown_ = now;
    const double fraction =
        p.bytes_total == 0 ? 1.0
                           : static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total);
    const int width = 30, filled = static_cast<int>(fraction * width + 0.5);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.append(static_cast<std::size_t>(width - filled), '.');
    std::string name =
        p.current.size() > 40 ? "..." + p.current.substr(p.current.size() - 37) : p.current;
    std::fprintf(stderr, "\r[%s] %zu/%zu tensors  %.2f/%.2f GB  %-40s", bar.c_str(), p.tensors_done,
                 p.tensors_total, static_cast<double>(p.bytes_done) / 1e9,
                 static_cast<double>(p.bytes_total) / 1e9, name.c_str());
    if (last) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point shown_{};
};

/// --dtype's words (CLI11 has checked them).
oft::io::MergeDtype merge_dtype(const std::string& name) {
  if (name == "f32") return oft::io::MergeDtype::F32;
  if (name == "f16") return oft::io::MergeDtype::F16;
  if (name == "bf16") return oft::io::MergeDtype::BF16;
  return oft::io::MergeDtype::Same;
}

/// --generators-dtype's words (CLI11 has checked them; "" when not given).
oft::io::GeneratorsDtype generators_dtype(const std::string& name) {
  if (name == "f32") return oft::io::GeneratorsDtype::F32;
  if (name == "bf16") return oft::io::GeneratorsDtype::BF16;
  if (name == "f16") return oft::io::GeneratorsDtype::F16;
  return oft::io::GeneratorsDtype::Unchanged;
}

/// The message of a library exception without its "oft: " (the tool names the command instead).
std::string without_prefix(const std::exception& e) {
  std::string message = e.what();
  if (message.rfind("oft: ", 0) == 0) message = message.substr(5);
  return message;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "oft: inspect, merge, unmerge and convert orthogonal finetuning adapters (PEFT OFT, BOFT, "
      "HRA)"};
  app.require_subcommand(1);
  app.footer(
      "PEFT BOFT and HRA adapters (peft_type in adapter_config.json): <m>.boft_R [m, N, b, b] with "
      "<m>.boft_s [n_out, 1], or <m>.hra_u [d, r] (apply_GS from the config); m, N and b come from "
      "boft_R (PEFT without CUDA stores one factor whatever the config says). Merged in double as "
      "PEFT's merge_and_unload (BOFT W' = diag(s) W0 M^T, HRA W' = W0 R_H). Refused: bias other "
      "than 'none', fan_in_fan_out, modules_to_save, layouts that do not factor, non-finite values, "
      "zero (or, with apply_GS, dependent) hra_u columns, --strength other than 1, convert. See "
      "docs/io.md.");
  std::string adapter_path;
  bool as_json = false;
  double tolerance = 1e-6;
  CLI::App* inspect = app.add_subcommand(
      "inspect",
      "Report on a PEFT OFT, BOFT or HRA adapter directory (peft_type decides), or a LyCORIS "
      "diag-OFT or BOFT, or kohya OFT .safetensors file");
  inspect
      ->add_option("ADAPTER", adapter_path,
                   "directory with adapter_config.json and adapter_model.safetensors, or a "
                   "LyCORIS or kohya OFT .safetensors file")
      ->required();
  inspect->add_flag("--json", as_json, "machine-readable output");
  inspect
      ->add_option("--tolerance", tolerance, "distance to exact Cayley for the 'k for tol' column")
      ->check(CLI::PositiveNumber);
  // Checked after parsing by oft::io::parse_dialect, so that a wrong name is one line.
  std::string dialect_arg;
  const char* dialect_help =
      "read the adapter as this dialect instead of detecting it by its keys: peft-oft, peft-boft, "
      "peft-hra, lycoris, kohya, onetrainer";
  inspect->add_option("--dialect", dialect_arg, dialect_help);

  // Paths are parsed as paths (as CLI11 shows them in --help), then handed to the library.
  std::filesystem::path base, adapter, out;
  double strength = 1.0;
  std::string dtype = "same";
  bool force = false, quiet = false;
  CLI::App* merge = app.add_subcommand(
      "merge", "Fold a PEFT OFT, BOFT or HRA adapter into a Hugging Face model directory");
  CLI::App* unmerge = app.add_subcommand(
      "unmerge", "Take a PEFT OFT, BOFT or HRA adapter out of a merged model directory (true inverse)");
  for (CLI::App* command : {merge, unmerge}) {
    command
        ->add_option("--base", base, "model directory (model.safetensors or an index and shards)")
        ->required();
    command->add_option("--adapter", adapter, "PEFT OFT, BOFT or HRA adapter directory")->required();
    command->add_option("--out,-o", out, "output directory (written whole, or not at all)")
        ->required();
    command->add_option("--strength", strength,
                        "rotate by R(s Q) instead of R(Q); default 1 (OFT only: BOFT and HRA "
                        "refuse any other)");
    command
        ->add_option("--dtype", dtype, "floating-point tensors as: same (default), f32, f16, bf16")
        ->check(CLI::IsMember({"same", "f32", "f16", "bf16"}));
    command->add_flag("--force", force, "replace an existing output directory");
    command->add_flag("--quiet,-q", quiet, "no progress bar");
    command->add_option(
        "--dialect", dialect_arg,
        "the adapter's dialect (peft-oft, peft-boft or peft-hra; the others are not "
        "merged into model directories yet)");
  }
  std::filesystem::path convert_adapter, convert_out, convert_base;
  bool expand_block_share = false, to_current_polynomial = false, allow_change = false,
       convert_force = false;
  std::string convert_dtype;
  CLI::App* convert = app.add_subcommand(
      "convert", "Rewrite a PEFT OFT adapter in another form PEFT loads (not BOFT or HRA)");
  convert->add_option("--adapter", convert_adapter, "PEFT OFT adapter directory")->required();
  convert->add_option("--out,-o", convert_out, "output adapter directory")->required();
  convert->add_flag("--expand-block-share", expand_block_share,
                    "one generator per block instead of one shared (exact; needs --base)");
  convert->add_option("--base", convert_base, "model directory, for --expand-block-share");
  convert->add_option("--generators-dtype", convert_dtype, "f32, bf16 or f16")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  convert->add_flag(
      "--to-current-polynomial", to_current_polynomial,
      "relabel a pre-0.18 adapter for PEFT >= 0.18 (changes R: needs --allow-change)");
  convert->add_flag("--allow-change", allow_change, "write a conversion that changes R");
  convert->add_flag("--force", convert_force, "replace an existing output directory");
  CLI11_PARSE(app, argc, argv);

  std::optional<oft::io::Dialect> dialect;
  if (!dialect_arg.empty()) {
    try {
      dialect = oft::io::parse_dialect(dialect_arg);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "oft %s: %s\n",
                   inspect->parsed() ? "inspect"
                   : merge->parsed() ? "merge"
                                     : "unmerge",
                   without_prefix(e).c_str());
      return 2;
    }
  }

  if (convert->parsed()) {
    oft::io::ConvertOptions options;
    options.adapter = convert_adapter.string();
    options.out = convert_out.string();
    options.base = convert_base.string();
    options.expand_block_share = expand_block_share;
    options.generators_dtype = generators_dtype(convert_dtype);
    options.to_current_polynomial = to_current_polynomial;
    options.allow_change = allow_change;
    options.force = convert_force;
    try {
      const auto report = oft::io::convert_adapter(options);
      for (const auto& m : report.modules)
        std::printf("  %-40s max |R_new - R_old| = %.3g\n", m.name.c_str(), m.max_change);
      std::printf("oft convert: wrote %s (largest change of an entry of R: %.3g)\n",
                  options.out.c_str(), report.max_change);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "oft convert: %s\n", without_prefix(e).c_str());
      return 1;
    }
    return 0;
  }

  if (merge->parsed() || unmerge->parsed()) {
    const char* name = merge->parsed() ? "merge" : "unmerge";
    oft::io::MergeOptions options;
    options.base = base.string();
    options.adapter = adapter.string();
    options.out = out.string();
    options.strength = strength;
    options.dtype = merge_dtype(dtype);
    options.force = force;
    options.unmerge = unmerge->parsed();
    try {
      if (dialect && !oft::io::is_peft(*dialect))
        throw std::invalid_argument(
            oft::detail::message("--dialect ", oft::io::dialect_name(*dialect), ": oft ", name,
                                 " folds PEFT adapter directories into model directories; a ",
                                 oft::io::dialect_name(*dialect),
                                 " adapter merges through the library (per weight) only, for now"));
      if (dialect) (void)oft::io::resolve_dialect(adapter, dialect);
      ProgressBar bar(!quiet && ::isatty(2) != 0);
      const auto report = oft::io::merge_model(options, std::ref(bar));
      std::printf(
          "oft %s: wrote %s: %zu tensors in %zu file(s), %zu adapted, %zu other files copied\n",
          name, options.out.c_str(), report.tensors, report.shards, report.adapted.size(),
          report.other_files);
      for (const auto& q : report.quantized) {
        std::printf(
            "  %s: %s%s requantized: error vs the float merge max %.3g, RMS %.3g; "
            "the adapter's change max %.3g, RMS %.3g\n",
            q.layer.c_str(), q.format.c_str(), q.double_quant ? " (double quantization)" : "",
            q.max_error, q.rms_error, q.max_change, q.rms_change);
        if (q.rms_error >= 0.5 * q.rms_change)
          std::printf(
              "    note: requantization rounds away about as much as the adapter changed; "
              "consider keeping the adapter unmerged or merging into a float base\n");
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "oft %s: %s\n", name, without_prefix(e).c_str());
      return 1;
    }
    return 0;
  }

  try {
    using oft::io::Dialect;
    const Dialect found = oft::io::resolve_dialect(adapter_path, dialect);
    const std::filesystem::path tensors = oft::io::dialect_tensor_file(adapter_path);
    if (found == Dialect::Lycoris || found == Dialect::Kohya) {
      const auto report = oft::io::inspect_lycoris(oft::io::LycorisAdapter::load(
          tensors, found == Dialect::Kohya ? oft::io::LycorisAdapter::Dialect::Kohya
                                           : oft::io::LycorisAdapter::Dialect::Lycoris));
      if (as_json)
        std::cout << to_json(report).dump(2) << "\n";
      else
        print_lycoris_table(adapter_path, report);
      return 0;
    }
    if (found == Dialect::OneTrainer) {
      // A PEFT directory read as OneTrainer's: its config says what PEFT trained, to measure.
      std::optional<oft::io::PeftOftConfig> peft;
      if (std::filesystem::is_regular_file(std::filesystem::path(adapter_path) /
                                           "adapter_config.json"))
        peft = oft::io::PeftOftAdapter::load(adapter_path).config;
      const auto report = oft::io::inspect_onetrainer(oft::io::OneTrainerAdapter::load(tensors),
                                                      peft ? &*peft : nullptr);
      if (as_json)
        std::cout << to_json(report).dump(2) << "\n";
      else
        print_onetrainer_table(adapter_path, report);
      return 0;
    }
    const auto report = oft::io::inspect_adapter(adapter_path, tolerance);
    if (as_json)
      std::cout << to_json(report).dump(2) << "\n";
    else if (report.family != "OFT")
      print_family_table(adapter_path, report);
    else
      print_table(adapter_path, report);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft inspect: %s\n", without_prefix(e).c_str());
    return 1;
  }
  return 0;
}
