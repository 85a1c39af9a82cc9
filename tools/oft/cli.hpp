#pragma once
// What the `oft` tool's commands share: each command's options (filled by CLI11 in main.cpp's
// parser) and the function that runs it, returning the exit status.

#include <CLI/CLI.hpp>
#include <exception>
#include <filesystem>
#include <string>

namespace oft_tool {

/// The message of a library exception without its "oft: " (the tool names the command instead).
std::string without_prefix(const std::exception& e);

/// The "read the adapter as this dialect" option (checked after parsing by oft::io::parse_dialect,
/// so that a wrong name is one line).
CLI::Option* add_dialect_option(CLI::App& command, std::string& dialect, const char* help);

struct InspectCommand {
  CLI::App* app = nullptr;
  std::string adapter;
  bool json = false;
  double tolerance = 1e-6;
  std::string dialect;
};
void add_inspect(CLI::App& app, InspectCommand& command);
int run_inspect(const InspectCommand& command);

/// merge and unmerge take the same options.
struct MergeCommand {
  CLI::App* app = nullptr;
  bool unmerge = false;
  std::filesystem::path base, adapter, out;
  double strength = 1.0;
  double blend = 1.0;  ///< --blend: a LyCORIS/kohya/OneTrainer file's linear blend (merge only)
  std::string dtype = "same";
  bool force = false, quiet = false;
  std::string dialect;
  std::string variant;  ///< --variant: a diffusers folder's weights variant (fp16, ...)
};
void add_merge(CLI::App& app, MergeCommand& command, bool unmerge);
int run_merge(const MergeCommand& command);

struct ConvertCommand {
  CLI::App* app = nullptr;
  std::filesystem::path adapter, out, base;
  bool expand_block_share = false, to_current_polynomial = false, allow_change = false,
       force = false;
  std::string generators_dtype;
  std::string to, dialect;  ///< --to peft|lycoris|kohya|onetrainer (another dialect), --dialect
  double tolerance = 1e-6;  ///< with --to: the change of an entry of R that still counts as exact
};
void add_convert(CLI::App& app, ConvertCommand& command);
int run_convert(const ConvertCommand& command);

}  // namespace oft_tool
