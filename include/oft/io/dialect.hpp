#pragma once
/// \file io/dialect.hpp
/// Whose OFT file is this: the one place that tells the dialects apart by their tensor names, for
/// `oft inspect` and `oft merge` (and `--dialect NAME` to override it).
///
///   oft::io::Dialect d = oft::io::detect_dialect("adapter.safetensors");   // or a PEFT directory
///   oft::io::Dialect forced = oft::io::parse_dialect("onetrainer");
///
/// The signatures (each from its owner's saver; docs/dialects.md and docs/io.md quote them):
///   peft-oft    `base_model.model.<m>.oft_R.weight` or `.oft_embedding_R.weight` (PEFT's OFT)
///   peft-boft   `<m>.boft_R`, `<m>.boft_s` (PEFT's BOFT)
///   peft-hra    `<m>.hra_u` (PEFT's HRA)
///   lycoris     `<m>.oft_blocks` [k, b, b] (diag-OFT) or [m, N, b, b] (BOFT), outside kohya's
///   names kohya       `oft_unet_<m>.oft_blocks` (sd-scripts networks/oft.py) or FLUX's
///               `<m>.oft_blocks.<i>` (networks/oft_flux.py)
///   onetrainer  `<m>.oft_R.weight` not under `base_model.model.`, or a flag
///   `<m>.oft_R.scaled_oft`,
///               `.oft_R.clipped_oft`, `.oft_R.cans_oft` (OneTrainer / ComfyUI-OFTv2)
/// A PEFT adapter is a directory; its keys are read from adapter_model.safetensors. A file (or
/// directory) whose keys match no dialect, or more than one, is refused naming the keys that
/// matched (or the first keys it holds): format_error, a std::invalid_argument.

#include <array>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "lycoris_adapter.hpp"
#include "onetrainer_adapter.hpp"
#include "safetensors_reader.hpp"

namespace oft::io {

enum class Dialect { PeftOft, PeftBoft, PeftHra, Lycoris, Kohya, OneTrainer };

inline constexpr std::array<Dialect, 6> kDialects{Dialect::PeftOft, Dialect::PeftBoft,
                                                  Dialect::PeftHra, Dialect::Lycoris,
                                                  Dialect::Kohya,   Dialect::OneTrainer};

/// The name `--dialect` takes.
inline const char* dialect_name(Dialect d) {
  switch (d) {
    case Dialect::PeftOft:
      return "peft-oft";
    case Dialect::PeftBoft:
      return "peft-boft";
    case Dialect::PeftHra:
      return "peft-hra";
    case Dialect::Lycoris:
      return "lycoris";
    case Dialect::Kohya:
      return "kohya";
    case Dialect::OneTrainer:
      return "onetrainer";
  }
  return "?";
}

inline bool is_peft(Dialect d) {
  return d == Dialect::PeftOft || d == Dialect::PeftBoft || d == Dialect::PeftHra;
}

/// The dialect called `name`; std::invalid_argument listing the known names otherwise.
inline Dialect parse_dialect(const std::string& name) {
  std::ostringstream known;
  for (const Dialect d : kDialects) {
    if (name == dialect_name(d)) return d;
    known << (d == kDialects.front() ? "" : ", ") << dialect_name(d);
  }
  throw std::invalid_argument(oft::detail::message(
      "oft: unknown dialect ", detail::quote_name(name), " (known: ", known.str(), ")"));
}

/// The file a dialect's keys are read from: `path` itself, or a PEFT directory's
/// adapter_model.safetensors.
inline std::filesystem::path dialect_tensor_file(const std::filesystem::path& path) {
  return std::filesystem::is_directory(path) ? path / "adapter_model.safetensors" : path;
}

/// The dialect of an open file by its keys (see the file comment); `where` names it in errors.
inline Dialect detect_dialect(const SafetensorsFile& file) {
  std::array<std::string, kDialects.size()> first;  // one key per matching dialect
  auto hit = [&](Dialect d, const std::string& key) {
    std::string& slot = first[static_cast<std::size_t>(d)];
    if (slot.empty()) slot = key;
  };
  for (const TensorInfo& info : file.tensors()) {
    const std::string& k = info.name;
    std::string split_name;
    Index split_index = 0;
    const bool peft_name = k.rfind(OneTrainerAdapter::kPeftPrefix, 0) == 0;
    if (peft_name &&
        (detail::ends_with(k, ".oft_R.weight") || detail::ends_with(k, ".oft_embedding_R.weight")))
      hit(Dialect::PeftOft, k);
    if (detail::ends_with(k, ".boft_R") || detail::ends_with(k, ".boft_s"))
      hit(Dialect::PeftBoft, k);
    if (detail::ends_with(k, ".hra_u")) hit(Dialect::PeftHra, k);
    if (detail::ends_with(k, LycorisAdapter::kBlocksSuffix))
      hit(k.rfind(LycorisAdapter::kKohyaPrefix, 0) == 0 ? Dialect::Kohya : Dialect::Lycoris, k);
    if (LycorisAdapter::split_key(k, split_name, split_index)) hit(Dialect::Kohya, k);
    if (detail::ends_with(k, OneTrainerAdapter::kScaledSuffix) ||
        detail::ends_with(k, OneTrainerAdapter::kClippedSuffix) ||
        detail::ends_with(k, OneTrainerAdapter::kCansSuffix) ||
        (!peft_name && detail::ends_with(k, OneTrainerAdapter::kWeightSuffix)))
      hit(Dialect::OneTrainer, k);
  }
  std::vector<Dialect> found;
  std::ostringstream matched;
  for (const Dialect d : kDialects)
    if (!first[static_cast<std::size_t>(d)].empty()) {
      matched << (found.empty() ? "" : ", ") << dialect_name(d) << " ("
              << detail::quote_name(first[static_cast<std::size_t>(d)]) << ")";
      found.push_back(d);
    }
  const std::string where = file.path().string();
  if (found.size() == 1) return found.front();
  if (found.size() > 1)
    detail::fail(where, "its keys match more than one OFT dialect: ", matched.str(),
                 "; name one with --dialect");
  const std::vector<std::string> names = file.tensor_names();
  std::ostringstream listed;
  for (std::size_t i = 0; i < names.size() && i < 6; ++i)
    listed << (i ? ", " : "") << detail::quote_name(names[i]);
  if (names.size() > 6) listed << ", ... (" << names.size() << " tensors)";
  detail::fail(
      where,
      "its keys match no OFT dialect (PEFT OFT/BOFT/HRA, LyCORIS, kohya, OneTrainer); it holds ",
      names.empty() ? std::string("no tensor") : listed.str());
}

/// The dialect of a file or PEFT adapter directory.
inline Dialect detect_dialect(const std::filesystem::path& path) {
  return detect_dialect(SafetensorsFile::open(dialect_tensor_file(path)));
}

/// The dialect to read `path` as: `forced` when given, else detect_dialect(path). A forced PEFT
/// dialect must be a directory whose keys agree (PEFT's adapter_config.json decides how PEFT
/// reads it, so --dialect cannot change that); any other forced dialect is returned as is, and
/// its reader then refuses keys that are not its own.
inline Dialect resolve_dialect(const std::filesystem::path& path,
                               const std::optional<Dialect>& forced) {
  if (!forced) return detect_dialect(path);
  if (!is_peft(*forced)) return *forced;
  if (!std::filesystem::is_directory(path))
    detail::fail(
        path.string(), "--dialect ", dialect_name(*forced),
        ": a PEFT adapter is a directory (adapter_config.json beside adapter_model.safetensors)");
  const Dialect found = detect_dialect(path);
  if (found != *forced)
    detail::fail(path.string(), "--dialect ", dialect_name(*forced), ", but its keys are ",
                 dialect_name(found),
                 "'s; PEFT's adapter_config.json decides how PEFT reads an adapter");
  return found;
}

}  // namespace oft::io
