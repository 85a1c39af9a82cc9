#pragma once
/// \file io/inspect_any.hpp
/// The report on one adapter of any dialect, the one function behind `oft inspect` and
/// `oft.inspect_adapter`: the dialect resolved (detected by its keys, or the one the caller
/// names), that dialect's own report, and the uniform per-module summary (io/dialect_convert.hpp).
/// to_json() is `oft inspect --json`: the dialect's own JSON, each module gaining "summary".

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "adapter_inspect.hpp"
#include "dialect.hpp"
#include "dialect_convert.hpp"
#include "lycoris_adapter.hpp"
#include "onetrainer_adapter.hpp"
#include "peft_adapter.hpp"

namespace oft::io {

/// One adapter's report: exactly one of the three dialect reports is set, as `dialect` says
/// (PEFT OFT, BOFT and HRA directories: `peft`; LyCORIS and kohya files: `lycoris`; OneTrainer
/// files, or a PEFT directory read as OneTrainer's: `onetrainer`).
struct AnyAdapterReport {
  Dialect dialect = Dialect::PeftOft;
  std::optional<AdapterReport> peft;
  std::optional<std::vector<LycorisModuleReport>> lycoris;
  std::optional<std::vector<OneTrainerModuleReport>> onetrainer;
  std::vector<DialectModuleSummary> summary;  ///< one row per module, in the report's order
};

/// Reads and reports on `path` (a PEFT adapter directory or a single-file adapter). `dialect`
/// overrides the detection; `tolerance` is the PEFT report's distance to exact Cayley for its
/// "k for tol" column. Throws what the readers throw (std::invalid_argument naming the file).
inline AnyAdapterReport inspect_any_adapter(const std::filesystem::path& path,
                                            std::optional<Dialect> dialect, double tolerance) {
  AnyAdapterReport out;
  out.dialect = resolve_dialect(path, dialect);
  const std::filesystem::path tensors = dialect_tensor_file(path);
  if (out.dialect == Dialect::Lycoris || out.dialect == Dialect::Kohya) {
    out.lycoris = inspect_lycoris(LycorisAdapter::load(
        tensors, out.dialect == Dialect::Kohya ? LycorisAdapter::Dialect::Kohya
                                               : LycorisAdapter::Dialect::Lycoris));
    out.summary = summarize(*out.lycoris);
  } else if (out.dialect == Dialect::OneTrainer) {
    // A PEFT directory read as OneTrainer's: its config says what PEFT trained, to measure.
    std::optional<PeftOftConfig> peft;
    if (std::filesystem::is_regular_file(path / "adapter_config.json"))
      peft = PeftOftAdapter::load(path).config;
    out.onetrainer = inspect_onetrainer(OneTrainerAdapter::load(tensors), peft ? &*peft : nullptr);
    out.summary = summarize(*out.onetrainer);
  } else {
    out.peft = inspect_adapter(path.string(), tolerance);
    std::optional<PeftOftAdapter> adapter;  // COFT's binding needs the generators
    if (out.peft->family == "OFT") adapter = PeftOftAdapter::load(path);
    out.summary = summarize(*out.peft, adapter ? &*adapter : nullptr);
  }
  return out;
}

/// `oft inspect --json`: the dialect's own JSON (scripts and Python read its fields), each
/// module gaining "summary" (to_json(DialectModuleSummary)).
inline nlohmann::ordered_json to_json(const AnyAdapterReport& report) {
  nlohmann::ordered_json json = report.lycoris      ? to_json(*report.lycoris)
                                : report.onetrainer ? to_json(*report.onetrainer)
                                                    : to_json(*report.peft);
  for (std::size_t i = 0; i < report.summary.size() && i < json["modules"].size(); ++i)
    json["modules"][i]["summary"] = to_json(report.summary[i]);
  return json;
}

}  // namespace oft::io
