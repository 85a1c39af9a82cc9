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
//   oft convert --to peft|lycoris|kohya|onetrainer --adapter IN --out OUT [--dialect NAME]
//       [--tolerance TOL] [--allow-change] [--force]: an adapter of one dialect written in
//       another where that is exact, refused with the measured change otherwise
//       (oft::io::convert_dialect, io/dialect_convert.hpp).
//   oft --version
// Bad input: one line on stderr naming the file and the values, exit status 1 (2 for bad
// arguments, from CLI11, or an unknown --dialect).
//
// main.cpp parses; each command lives in its own file (inspect.cpp, merge.cpp, convert.cpp).

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <oft/io/dialect.hpp>
#include <oft/version.hpp>
#include <string>

#include "cli.hpp"

namespace oft_tool {

std::string without_prefix(const std::exception& e) {
  std::string message = e.what();
  if (message.rfind("oft: ", 0) == 0) message = message.substr(5);
  return message;
}

CLI::Option* add_dialect_option(CLI::App& command, std::string& dialect, const char* help) {
  return command.add_option("--dialect", dialect, help);
}

}  // namespace oft_tool

int main(int argc, char** argv) {
  CLI::App app{
      "oft: inspect, merge, unmerge and convert orthogonal finetuning adapters (PEFT OFT, BOFT, "
      "HRA; LyCORIS, kohya and OneTrainer OFT)"};
  app.set_version_flag("--version", std::string("oft ") + oft::version_string());
  app.require_subcommand(1);
  app.footer(
      "PEFT BOFT and HRA adapters (peft_type in adapter_config.json): <m>.boft_R [m, N, b, b] with "
      "<m>.boft_s [n_out, 1], or <m>.hra_u [d, r] (apply_GS from the config); m, N and b come from "
      "boft_R (PEFT without CUDA stores one factor whatever the config says). Merged in double as "
      "PEFT's merge_and_unload (BOFT W' = diag(s) W0 M^T, HRA W' = W0 R_H). Refused: bias other "
      "than 'none', fan_in_fan_out, modules_to_save, layouts that do not factor, non-finite values, "
      "zero (or, with apply_GS, dependent) hra_u columns, --strength other than 1, convert. See "
      "docs/io.md.");
  oft_tool::InspectCommand inspect;
  oft_tool::MergeCommand merge, unmerge;
  oft_tool::ConvertCommand convert;
  oft_tool::add_inspect(app, inspect);
  oft_tool::add_merge(app, merge, /*unmerge=*/false);
  oft_tool::add_merge(app, unmerge, /*unmerge=*/true);
  oft_tool::add_convert(app, convert);
  CLI11_PARSE(app, argc, argv);

  // An unknown --dialect is a bad argument (exit 2), as CLI11's own refusals are.
  for (const auto& [command, dialect] :
       {std::pair{inspect.app, &inspect.dialect}, std::pair{merge.app, &merge.dialect},
        std::pair{unmerge.app, &unmerge.dialect}}) {
    if (!command->parsed() || dialect->empty()) continue;
    try {
      (void)oft::io::parse_dialect(*dialect);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "oft %s: %s\n", command->get_name().c_str(),
                   oft_tool::without_prefix(e).c_str());
      return 2;
    }
  }
  if (convert.app->parsed()) return oft_tool::run_convert(convert);
  if (merge.app->parsed()) return oft_tool::run_merge(merge);
  if (unmerge.app->parsed()) return oft_tool::run_merge(unmerge);
  return oft_tool::run_inspect(inspect);
}
