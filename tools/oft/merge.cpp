// `oft merge` and `oft unmerge`: an adapter folded into (or taken out of) a model directory,
// streamed tensor by tensor with a progress bar.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <oft/io/dialect.hpp>
#include <oft/io/diffusion_merge.hpp>
#include <oft/io/model_merge.hpp>
#include <optional>
#include <stdexcept>
#include <string>

#include "cli.hpp"

namespace oft_tool {
namespace {

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

}  // namespace

void add_merge(CLI::App& app, MergeCommand& command, bool unmerge) {
  command.unmerge = unmerge;
  command.app =
      unmerge ? app.add_subcommand("unmerge",
                                   "Take a PEFT OFT, BOFT or HRA adapter out of a merged model "
                                   "directory (true inverse)")
              : app.add_subcommand("merge",
                                   "Fold a PEFT OFT, BOFT or HRA adapter into a Hugging Face model "
                                   "directory, or a LyCORIS, kohya or OneTrainer OFT file into a "
                                   "diffusers folder or a single-file checkpoint");
  CLI::App& c = *command.app;
  c.add_option("--base", command.base,
               "model directory (model.safetensors or an index and shards); for an adapter "
               "file: a diffusers model folder or a single-file .safetensors checkpoint")
      ->required();
  c.add_option("--adapter", command.adapter,
               "PEFT OFT, BOFT or HRA adapter directory, or a LyCORIS / kohya / OneTrainer OFT "
               ".safetensors file")
      ->required();
  c.add_option("--out,-o", command.out,
               "output directory (or file, for a single-file base), written whole or not at all")
      ->required();
  auto* strength =
      c.add_option("--strength", command.strength,
                   "rotate by R(s Q) instead of R(Q), orthogonal for every s; default 1 (BOFT "
                   "and HRA refuse any other)");
  if (!unmerge)
    c.add_option("--blend", command.blend,
                 "LyCORIS/kohya/OneTrainer files only: the dialect's linear blend s R + (1 - s) I "
                 "(what LyCORIS and ComfyUI call strength; not orthogonal unless s is 0 or 1)")
        ->excludes(strength);
  c.add_option("--dtype", command.dtype,
               "floating-point tensors as: same (default), f32, f16, bf16")
      ->check(CLI::IsMember({"same", "f32", "f16", "bf16"}));
  if (!unmerge)
    c.add_option("--variant", command.variant,
                 "diffusers folders only: the weights variant to merge where a component has "
                 "several (fp16 for diffusion_pytorch_model.fp16.safetensors); the other "
                 "variants' weights are left out of the output");
  c.add_flag("--force", command.force, "replace an existing output");
  c.add_flag("--quiet,-q", command.quiet, "no progress bar");
  add_dialect_option(c, command.dialect,
                     "the adapter's dialect (peft-oft, peft-boft, peft-hra for a directory; "
                     "lycoris, kohya, onetrainer for a file)");
}

namespace {

/// `oft merge` of a LyCORIS, kohya or OneTrainer file into a diffusion checkpoint.
int run_diffusion_merge(const MergeCommand& command,
                        const std::optional<oft::io::Dialect>& dialect) {
  oft::io::DiffusionMergeOptions options;
  options.base = command.base.string();
  options.adapter = command.adapter.string();
  options.out = command.out.string();
  if (command.app->count("--strength") != 0) options.strength = command.strength;
  if (command.app->count("--blend") != 0) options.blend = command.blend;
  options.dtype = merge_dtype(command.dtype);
  options.force = command.force;
  options.dialect = dialect;
  if (command.app->count("--variant") != 0) options.variant = command.variant;
  ProgressBar bar(!command.quiet && ::isatty(2) != 0);
  const auto report = oft::io::merge_diffusion(options, std::ref(bar));
  std::printf(
      "oft merge: wrote %s: %s adapter, %zu tensors in %zu file(s), %zu adapted, %zu "
      "other files copied\n",
      options.out.c_str(), oft::io::dialect_name(report.dialect), report.tensors, report.files,
      report.targets.size(), report.other_files);
  if (options.blend)
    std::printf(
        "  --blend %g: the blended blocks s R + (1 - s) I are not rotations: "
        "max ||M^T M - I||_2 = %.3g (--strength %g keeps them orthogonal)\n",
        *options.blend, report.blend_orthogonality_error, *options.blend);
  // Said, not silent: a folder without these loads only with variant=..., which is the point.
  for (const std::string& dropped : report.dropped)
    std::printf("  --variant %s: left out %s (another variant, unmerged)\n",
                options.variant->c_str(), dropped.c_str());
  return 0;
}

}  // namespace

int run_merge(const MergeCommand& command) {
  const char* name = command.unmerge ? "unmerge" : "merge";
  std::optional<oft::io::Dialect> dialect;
  try {
    if (!command.dialect.empty()) dialect = oft::io::parse_dialect(command.dialect);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft %s: %s\n", name, without_prefix(e).c_str());
    return 2;
  }
  try {
    oft::io::MergeOptions options;
    options.base = command.base.string();
    options.adapter = command.adapter.string();
    options.out = command.out.string();
    options.strength = command.strength;
    options.dtype = merge_dtype(command.dtype);
    options.force = command.force;
    options.unmerge = command.unmerge;
    // An adapter file (LyCORIS, kohya, OneTrainer) merges into a diffusion checkpoint; a PEFT
    // directory into a model directory.
    const bool file =
        !std::filesystem::is_directory(command.adapter) || (dialect && !oft::io::is_peft(*dialect));
    if (file && command.unmerge)
      throw std::invalid_argument(
          "oft unmerge takes a PEFT adapter directory out; a LyCORIS, kohya or OneTrainer "
          "merge is not undone (their blend has no exact inverse in general)");
    if (file) return run_diffusion_merge(command, dialect);
    if (!command.unmerge && command.app->count("--blend") != 0)
      throw std::invalid_argument(
          "--blend is the linear blend of LyCORIS, kohya and OneTrainer files; a PEFT adapter "
          "takes --strength");
    if (!command.unmerge && command.app->count("--variant") != 0)
      throw std::invalid_argument(
          "--variant picks a diffusers folder's weights for a LyCORIS, kohya or OneTrainer file; "
          "a PEFT adapter merges into a Hugging Face model directory, which has no variants");
    if (dialect) (void)oft::io::resolve_dialect(command.adapter, dialect);
    ProgressBar bar(!command.quiet && ::isatty(2) != 0);
    const auto report = oft::io::merge_model(options, std::ref(bar));
    std::printf(
        "oft %s: wrote %s: %zu tensors in %zu file(s), %zu adapted, %zu other files copied\n", name,
        options.out.c_str(), report.tensors, report.shards, report.adapted.size(),
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

}  // namespace oft_tool
