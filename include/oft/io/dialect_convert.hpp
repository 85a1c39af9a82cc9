#pragma once
/// \file io/dialect_convert.hpp
/// An OFT adapter of one dialect rewritten in another (`oft convert --to peft|lycoris|onetrainer`)
/// where that is exact, and refused with the measured change where it is not; and the one
/// per-module summary `oft inspect` prints for every dialect (side, b, constraint, rho,
/// orthogonality error, convention traps).
///
///   oft::io::DialectConvertOptions o;
///   o.adapter = "peft_dir"; o.out = "comfy.safetensors"; o.to = oft::io::Dialect::OneTrainer;
///   oft::io::DialectConvertReport r = oft::io::convert_dialect(o);
///
/// What each pair computes (docs/dialects.md states every dialect; docs/io.md has the table):
///   PEFT OFT -> OneTrainer   both rotate a Linear layer's input, W' = W R^T, from the same packed
///                            generators; ComfyUI-OFTv2 always takes 5 Neumann terms. Exact when
///                            PEFT's own R is that series (PEFT >= 0.18, 5 terms; COFT folded into
///                            the written generators). PEFT's exact branch (R(Q)^T, written as the
///                            negated generators), another term count or the pre-0.18 series:
///                            refused with max |R_loaded - R_PEFT| unless allow_change. Embedding
///                            modules (E' = E R) have no OneTrainer form: refused.
///   OneTrainer -> PEFT       PEFT >= 0.18 with 5 Neumann terms computes the loader's series;
///                            scaled_oft is folded into the generators (float32 rounding,
///                            measured); a clip that binds on no block is dropped (the loader's
///                            power-iteration sigma never exceeds ||Q||_2, so it never binds
///                            either); a binding clip has no single meaning (a new random draw on
///                            every load) and CANS is no polynomial: refused with the change
///                            unless allow_change (then the exact-norm clip is folded in; CANS
///                            modules go to PEFT's exact branch when every module is CANS).
///                            Exact for Linear layers only: the file does not say which modules
///                            are convolutions, where OneTrainer rotates W_flat R (a note says so).
///   kohya -> LyCORIS         the same output-side Cayley math; kohya's constraint factor
///                            (always applied, alpha = 0 included) is folded into the blocks and
///                            alpha written as 0 (LyCORIS: no constraint), the `oft_unet_` prefix
///                            becomes LyCORIS's `lora_unet_`; FLUX splits become one module when
///                            every split has the same b.
///   LyCORIS -> kohya         the same math but for the constraint rule: LyCORIS's factor (where
///                            its constraint binds) is folded into the blocks and alpha written
///                            a power of two with alpha * out >= 2 ||Q||_F, so that kohya's
///                            always-applied (min(n, c) + 1e-8) / (n + 1e-8) is exactly 1;
///                            `lora_unet_` becomes `oft_unet_`. Refused: modules outside the
///                            U-Net (kohya's OFT names no other), a rescale other than 1 (kohya
///                            has none; all ones are dropped).
///   LyCORIS, kohya -> PEFT, OneTrainer, and PEFT, OneTrainer -> LyCORIS, kohya: refused. LyCORIS
///                            rotates the OUTPUT channels, W' = R_out^T W; the others the input,
///                            W' = W R_in^T. Both hold for every W only when R_out = R_in = I
///                            (take W = e_j e_k^T), so no file of the other side carries it; only
///                            the merged weight does (`oft merge`). The refusal gives max |R - I|.
///   LyCORIS BOFT, PEFT BOFT/HRA: no other dialect has their structure: refused.
/// Every written file is read back by oft's reader before it is put in place and its R compared
/// with the source's (the round trip); refusals write nothing.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "adapter_inspect.hpp"
#include "atomic_directory.hpp"
#include "dialect.hpp"
#include "lycoris_adapter.hpp"
#include "onetrainer_adapter.hpp"
#include "peft_adapter.hpp"
#include "peft_family_adapter.hpp"

namespace oft::io {

// ------------------------------------------------------------------------------------------
// The uniform per-module summary of `oft inspect`.

/// One module of any dialect, in the same terms for all.
struct DialectModuleSummary {
  std::string name;
  std::string side;        ///< "input" (W' = W R^T) or "output" (W' = R^T W)
  Index block_size = 0;    ///< b
  std::string constraint;  ///< "" when the dialect has none (or it is off)
  /// The constrained quantity over its bound (> 1: binds); -1: none; infinite for kohya's
  /// alpha <= 0, whose bound is 0 (JSON: "inf").
  double binding = -1.0;
  double rho = 0.0;                  ///< max over blocks of ||Q_i||_2, as the dialect uses Q
  double orthogonality_error = 0.0;  ///< max ||R_i^T R_i - I||_2 of what the loader applies
  std::string traps;                 ///< convention traps that apply ("" when none), "; "-separated
};

inline nlohmann::ordered_json to_json(const DialectModuleSummary& s) {
  return {{"side", s.side},
          {"block_size", s.block_size},
          {"constraint", s.constraint},
          {"binding", s.binding < 0              ? nlohmann::ordered_json(nullptr)
                      : std::isfinite(s.binding) ? nlohmann::ordered_json(s.binding)
                                                 : nlohmann::ordered_json("inf")},
          {"rho", s.rho},
          {"orthogonality_error", s.orthogonality_error},
          {"traps", s.traps}};
}

namespace detail {
inline void add_trap(std::string& traps, const std::string& trap) {
  traps += (traps.empty() ? "" : "; ") + trap;
}
}  // namespace detail

/// PEFT OFT, BOFT or HRA: from inspect_adapter()'s report (and the adapter's config, for OFT).
inline std::vector<DialectModuleSummary> summarize(const AdapterReport& report,
                                                   const PeftOftAdapter* adapter = nullptr) {
  std::vector<DialectModuleSummary> out;
  for (std::size_t i = 0; i < report.modules.size(); ++i) {
    const ModuleReport& m = report.modules[i];
    DialectModuleSummary s;
    s.name = m.name;
    s.block_size = m.block_size;
    s.rho = m.rho.worst;
    s.orthogonality_error = m.orthogonality.worst;
    s.side = m.kind == "embedding" ? "output" : "input";
    if (report.family == "BOFT") {
      detail::add_trap(s.traps,
                       "PEFT BOFT: 0.5 (A - A^T) and its own butterfly permutation, not "
                       "LyCORIS BOFT's; boft_s scales the output");
    } else if (report.family == "HRA") {
      detail::add_trap(s.traps, "Householder reflections: no other dialect reads them");
    } else {
      if (m.kind == "embedding")
        detail::add_trap(s.traps,
                         "an Embedding rotates its output side (E' = E R): no other "
                         "dialect has this form");
      if (report.policy == "cayley")
        detail::add_trap(s.traps,
                         "an exact-branch PEFT adapter: OneTrainer/ComfyUI-OFTv2 would "
                         "load it as the inverse rotation");
      else if (report.polynomial != "current" || report.num_cayley_neumann_terms != 5)
        detail::add_trap(s.traps,
                         "ComfyUI-OFTv2 would load it with PEFT >= 0.18's 5-term "
                         "series, another R");
      if (m.diverges && report.policy != "cayley")
        detail::add_trap(s.traps, "rho >= 1: the Neumann series is far from a rotation");
      if (report.coft && adapter != nullptr && i < adapter->modules.size()) {
        const PeftOftModule& pm = adapter->modules[i];
        const double radius = peft::coft_radius(adapter->config.eps, pm.theta.count());
        s.constraint = "coft: ||Q_i||_F <= eps / sqrt(rows)";
        double worst = 0.0;
        for (Index g = 0; g < pm.theta.count(); ++g)
          worst = std::max(worst, static_cast<double>(pm.theta.dense(g).norm()));
        s.binding = radius > 0.0f ? worst / static_cast<double>(radius) : -1.0;
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

/// LyCORIS diag-OFT / BOFT, kohya: from inspect_lycoris()'s report.
inline std::vector<DialectModuleSummary> summarize(const std::vector<LycorisModuleReport>& report) {
  std::vector<DialectModuleSummary> out;
  for (const LycorisModuleReport& r : report) {
    DialectModuleSummary s;
    s.name = r.name;
    s.side = "output";
    s.block_size = r.block_size;
    s.rho = r.rho;
    s.orthogonality_error = r.orthogonality;
    const bool kohya = r.dialect == "kohya-oft";
    if (r.radius > 0.0 || kohya) {
      s.constraint = kohya ? "kohya: ||Q||_F <= alpha * out, always applied"
                           : "||Q||_F <= alpha * out over all blocks";
      s.binding = r.radius > 0.0 ? r.binding() : std::numeric_limits<double>::infinity();
    }
    if (kohya && r.alpha <= 0.0)
      detail::add_trap(s.traps,
                       "kohya constraint: alpha = 0 makes R ~ I (LyCORIS's rule would "
                       "apply the full rotation)");
    char blend[32];
    std::snprintf(blend, sizeof blend, "%.3g", r.blend_half);
    detail::add_trap(s.traps, std::string("LyCORIS multiplier blends, not a rotation (s = 1/2: "
                                          "||M^T M - I||_2 = ") +
                                  blend + ")");
    if (r.stages > 0)
      detail::add_trap(s.traps,
                       "LyCORIS BOFT multiplies by R, not R^T, with its own "
                       "permutation: not PEFT's BOFT");
    if (r.rescaled)
      detail::add_trap(s.traps,
                       "rescale scales output channels: W' is no rotation "
                       "of W");
    out.push_back(std::move(s));
  }
  return out;
}

/// OneTrainer / ComfyUI-OFTv2: from inspect_onetrainer()'s report.
inline std::vector<DialectModuleSummary> summarize(
    const std::vector<OneTrainerModuleReport>& report) {
  std::vector<DialectModuleSummary> out;
  for (const OneTrainerModuleReport& r : report) {
    DialectModuleSummary s;
    s.name = r.name;
    s.side = "input";
    s.block_size = r.block_size;
    s.rho = r.rho;
    s.orthogonality_error = r.orthogonality_error;
    if (r.clipped) {
      s.constraint = "clipped_oft: ||Q_i||_2 <= " + oft::detail::message(r.clip);
      s.binding = r.rho / r.clip;
    }
    if (!r.note.empty()) detail::add_trap(s.traps, r.note);
    if (r.clipped_blocks > 0)
      detail::add_trap(s.traps,
                       "a clipped OneTrainer file merges differently on every "
                       "ComfyUI-OFTv2 load (" +
                           std::to_string(r.clipped_blocks) +
                           " block(s) clipped by a randomly started power iteration)");
    if (r.cans)
      detail::add_trap(s.traps,
                       "cans_oft: the loader squares after Newton-Schulz, OneTrainer "
                       "since 7d415a4 before; the file does not say which trained it");
    detail::add_trap(s.traps, "Linear W R^T, Conv2d W_flat R: the file does not say which");
    out.push_back(std::move(s));
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// Conversion.

/// What convert_dialect is asked to do.
struct DialectConvertOptions {
  std::string adapter;               ///< a PEFT directory or a LyCORIS/kohya/OneTrainer file
  std::string out;                   ///< PEFT: a directory; LyCORIS, OneTrainer: a .safetensors
  Dialect to = Dialect::OneTrainer;  ///< PeftOft, Lycoris or OneTrainer
  std::optional<Dialect> from;       ///< the source's dialect; detected by its keys when absent
  bool allow_change = false;         ///< write a conversion that changes R (where one is defined)
  bool force = false;                ///< replace an existing output
  /// The largest entry change of any block of R that still counts as exact: the written
  /// generators are float32, so a folded factor (scaled_oft, a constraint) moves R by a few
  /// float32 ulps.
  double tolerance = 1e-6;
};

/// What convert_dialect wrote.
struct DialectConvertReport {
  struct Module {
    std::string name;     ///< the source's module name
    std::string written;  ///< the name in the written file
    double change = 0.0;  ///< max over blocks and entries of |R_written - R_source|, in double
    std::string note;     ///< what the conversion assumed or changed
  };
  Dialect from = Dialect::PeftOft, to = Dialect::OneTrainer;
  std::vector<Module> modules;
  double max_change = 0.0;
  double round_trip = 0.0;  ///< the same, from the written file read back by oft's reader
};

namespace detail {

using Blocks = std::vector<SquareMatrix<double>>;

inline double max_entry_change(const Blocks& a, const Blocks& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, (a[i] - b[i]).cwiseAbs().maxCoeff());
  return worst;
}

/// R of every stored generator row of a PEFT module under `config`'s policy, in double (theta
/// in oft's convention: negated for the exact branch, COFT already folded in).
inline Blocks peft_blocks(const PeftOftConfig& config, const Generators<float>& theta) {
  Generators<double> t(theta.count(), theta.block_size());
  t.values() = theta.values().cast<double>();
  AnyBlockOrthogonal<double> rotation(BlockSpec{t.count(), t.block_size(), false}, config.policy());
  rotation.set_generators(t);
  Blocks out;
  for (Index i = 0; i < t.count(); ++i) out.emplace_back(rotation.block(i));
  return out;
}

/// kohya's or LyCORIS's R per block at s = 1, in double from the float blocks.
inline Blocks lycoris_blocks(const LycorisDiagOftModule& m) {
  const std::vector<double> b(m.oft_blocks.begin(), m.oft_blocks.end());
  const lycoris::DiagOft<double> op(m.blocks, m.block_size, b.data(), double(m.alpha), {}, 1.0,
                                    m.rule);
  Blocks out;
  for (Index i = 0; i < m.blocks; ++i) out.emplace_back(op.block(i));
  return out;
}

inline double identity_distance(const Blocks& blocks) {
  double worst = 0.0;
  for (const auto& r : blocks)
    worst = std::max(
        worst, (r - SquareMatrix<double>::Identity(r.rows(), r.cols())).cwiseAbs().maxCoeff());
  return worst;
}

[[noreturn]] inline void refuse(const std::string& what) {
  throw std::invalid_argument("oft: convert: " + what);
}

/// The file next to `out` where a single-file output is written before its round trip passes.
inline std::filesystem::path staging_file(const std::filesystem::path& out) {
  return out.parent_path() / ("." + out.filename().string() + ".oft-partial");
}

/// Removes a staging file unless released.
struct RemoveFileOnFailure {
  std::filesystem::path path;
  bool armed = true;
  ~RemoveFileOnFailure() {
    if (!armed) return;
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
  }
};

inline void check_round_trip(DialectConvertReport& report, double tolerance, double achieved) {
  report.round_trip = achieved;
  // The written file must read back as what was measured: a reader/writer disagreement is a bug.
  if (!(achieved <= std::max(tolerance, report.max_change + tolerance)))
    refuse(oft::detail::message("the written file reads back with R off by ", achieved,
                                " (expected <= ", std::max(tolerance, report.max_change),
                                "); nothing written"));
}

inline void note_or_refuse(DialectConvertReport& report, const DialectConvertOptions& options,
                           const std::string& reason_if_changed) {
  const auto worst =
      std::max_element(report.modules.begin(), report.modules.end(),
                       [](const auto& a, const auto& b) { return a.change < b.change; });
  if (worst == report.modules.end()) return;
  report.max_change = worst->change;
  if (worst->change > options.tolerance && !options.allow_change)
    refuse(oft::detail::message("to ", dialect_name(options.to), ": not exact (module '",
                                worst->name, "': an entry of R moves by ", worst->change,
                                ", tolerance ", options.tolerance, "; ",
                                worst->note.empty() ? reason_if_changed : worst->note,
                                "); pass --allow-change to write it anyway"));
}

/// PEFT OFT directory -> OneTrainer file.
inline DialectConvertReport peft_to_onetrainer(const DialectConvertOptions& options) {
  namespace fs = std::filesystem;
  const PeftOftAdapter peft = PeftOftAdapter::load(options.adapter);
  const PeftOftConfig& config = peft.config;
  DialectConvertReport report;
  OneTrainerAdapter written;
  const bool same_series = config.use_cayley_neumann && config.num_cayley_neumann_terms == 5 &&
                           config.neumann_form() == peft::NeumannForm::Current;
  for (const PeftOftModule& m : peft.modules) {
    if (m.kind != PeftModuleKind::Linear)
      refuse(oft::detail::message("module '", m.name,
                                  "' is a PEFT Embedding, rotated on its output side (E' = E R); "
                                  "OneTrainer/ComfyUI-OFTv2 has no such form"));
    const Generators<float> theta = peft.effective_generators(m);
    OneTrainerModule o;
    o.name = m.name;
    o.rows = theta.count();
    o.block_size = theta.block_size();
    o.theta.assign(theta.values().data(), theta.values().data() + theta.values().size());
    DialectConvertReport::Module row{
        m.name, m.name, max_entry_change(o.rotations(), peft_blocks(config, theta)), ""};
    if (!config.use_cayley_neumann)
      row.note =
          "PEFT's exact branch computes R(Q)^T; the loader's 5-term series of the negated "
          "generators only approximates it";
    else if (!same_series)
      row.note = oft::detail::message(
          "PEFT's ", config.num_cayley_neumann_terms, "-term ",
          config.neumann_form() == peft::NeumannForm::Current ? "series" : "pre-0.18 series",
          " against the loader's 5-term one");
    if (config.coft)
      row.note += std::string(row.note.empty() ? "" : "; ") +
                  "COFT's projection folded into the generators";
    report.modules.push_back(row);
    written.modules.push_back(std::move(o));
  }
  note_or_refuse(report, options, "");
  const fs::path out = fs::absolute(options.out), staging = staging_file(out);
  RemoveFileOnFailure cleanup{staging};
  written.save(staging);
  const OneTrainerAdapter back = OneTrainerAdapter::load(staging);
  double achieved = 0.0;
  for (std::size_t i = 0; i < back.modules.size(); ++i)
    achieved =
        std::max(achieved,
                 max_entry_change(back.modules[i].rotations(),
                                  peft_blocks(config, peft.effective_generators(peft.modules[i]))));
  check_round_trip(report, options.tolerance, achieved);
  fs::rename(staging, out);
  cleanup.armed = false;
  return report;
}

/// PEFT's adapter_config.json for a converted adapter (PEFT >= 0.18's polynomial).
inline nlohmann::ordered_json peft_config_json(const std::vector<std::string>& targets, Index b,
                                               bool neumann, bool shared) {
  return {{"base_model_name_or_path", nullptr},
          {"bias", "none"},
          {"block_share", shared},
          {"coft", false},
          {"eps", 6e-5},
          {"fan_in_fan_out", false},
          {"inference_mode", true},
          {"init_weights", true},
          {"module_dropout", 0.0},
          {"num_cayley_neumann_terms", 5},
          {"oft_block_size", b},
          {"peft_type", "OFT"},
          {"peft_version", "0.18.0"},
          {"r", 0},
          {"target_modules", targets},
          {"task_type", nullptr},
          {"use_cayley_neumann", neumann}};
}

/// OneTrainer file -> PEFT OFT directory.
inline DialectConvertReport onetrainer_to_peft(const DialectConvertOptions& options) {
  namespace fs = std::filesystem;
  const OneTrainerAdapter source = OneTrainerAdapter::load(options.adapter);
  const OneTrainerModule& first = source.modules.front();
  bool all_cans = true;
  for (const OneTrainerModule& m : source.modules) {
    all_cans = all_cans && m.flags.cans;
    if ((m.rows == 1) != (first.rows == 1))
      refuse(oft::detail::message("module '", m.name, "' ",
                                  m.rows == 1 ? "shares"
                                              : "does not "
                                                "share",
                                  " one block and module '", first.name, "' ",
                                  first.rows == 1 ? "does" : "does not",
                                  ": PEFT's block_share is one setting for the whole adapter"));
  }
  PeftOftAdapter written;
  written.config.use_cayley_neumann = !all_cans;
  written.config.num_cayley_neumann_terms = 5;
  written.config.peft_version = "0.18.0";
  written.config.block_share = first.rows == 1;
  DialectConvertReport report;
  std::vector<std::string> targets;
  for (const OneTrainerModule& m : source.modules) {
    const Blocks loaded = m.rotations();  // clipped by the exact norm
    const Index packed = m.block_size * (m.block_size - 1) / 2;
    const double scale =
        m.flags.scaled ? 2.0 * std::sqrt(static_cast<double>(m.block_size - 1)) : 1.0;
    Generators<float> theta(m.rows, m.block_size);
    std::string note;
    Index binding = 0;
    for (Index i = 0; i < m.rows; ++i) {
      double factor = 1.0 / scale;
      if (m.flags.clipped) {
        const double sigma = oft::detail::skew_spectral_norm(onetrainer::skew_block(
                                 m.theta.data() + i * packed, m.block_size)) /
                             scale;
        if (sigma > m.flags.clip) {
          ++binding;
          factor *= m.flags.clip / sigma;
        }
      }
      // oft's convention (R = policy(theta)); PeftOftAdapter::save negates for the exact branch.
      for (Index j = 0; j < packed; ++j)
        theta.row(i)[j] =
            static_cast<float>(factor * m.theta[static_cast<std::size_t>(i * packed + j)]);
    }
    Blocks converted = peft_blocks(written.config, theta);
    double change = max_entry_change(converted, loaded);
    if (binding > 0) {
      // The loader clips by a power iteration from a new random start on every load: the file
      // has no single R. Measured: what oft's exact-norm clip changes against no clip.
      OneTrainerModule unclipped = m;
      unclipped.flags.clipped = false;
      change = std::max(change, max_entry_change(unclipped.rotations(), loaded));
      note =
          oft::detail::message("clipped_oft binds on ", binding,
                               " block(s): ComfyUI-OFTv2 clips by a randomly started power "
                               "iteration on every load, so the file has no single R; the "
                               "change is the exact-norm clip's against none, and --allow-change "
                               "writes the exact-norm clip");
    }
    if (m.flags.cans)
      note += std::string(note.empty() ? "" : "; ") +
              (all_cans ? "CANS (Newton-Schulz) only approximates exact Cayley, PEFT's exact branch"
                        : "CANS is no 5-term series, and PEFT's one setting is that series");
    if (m.flags.scaled)
      note += std::string(note.empty() ? "" : "; ") +
              "scaled_oft folded into the generators (float32 rounding)";
    if (m.name.rfind("lora_", 0) == 0)
      note += std::string(note.empty() ? "" : "; ") +
              "a kohya-style flattened name: PEFT keys need the model's dotted module path";
    if (m.block_size != first.block_size)
      note += oft::detail::message(
          note.empty() ? "" : "; ", "b=", m.block_size, " but oft_block_size=", first.block_size,
          ": PEFT re-derives b from oft_block_size and the layer's width, so PEFT loads this "
          "module only where that gives b=",
          m.block_size, " (a shape error otherwise)");
    note += std::string(note.empty() ? "" : "; ") +
            "exact for a Linear layer only (OneTrainer rotates a Conv2d's W_flat by R)";
    report.modules.push_back({m.name, m.name, change, note});
    PeftOftModule pm;
    pm.name = m.name;
    pm.kind = PeftModuleKind::Linear;
    pm.spec = BlockSpec{m.rows, m.block_size, m.rows == 1};
    pm.theta = std::move(theta);
    written.modules.push_back(std::move(pm));
    targets.push_back(m.name);
  }
  note_or_refuse(report, options, "");
  written.config.raw = peft_config_json(
      targets, first.block_size, written.config.use_cayley_neumann, written.config.block_share);
  const fs::path out = fs::absolute(options.out);
  const fs::path staging = staging_directory(out);
  fs::remove_all(staging);
  RemoveOnFailure cleanup(staging);
  written.save(staging);
  const PeftOftAdapter back = PeftOftAdapter::load(staging);
  double achieved = 0.0;
  for (std::size_t i = 0; i < back.modules.size(); ++i) {
    // Against the written generators' R (the conversion's measured change is reported apart).
    achieved = std::max(
        achieved,
        max_entry_change(peft_blocks(back.config, back.effective_generators(back.modules[i])),
                         peft_blocks(written.config, written.modules[i].theta)));
  }
  report.round_trip = achieved;
  if (achieved > options.tolerance)
    refuse(oft::detail::message("the written adapter reads back with R off by ", achieved,
                                "; nothing written"));
  commit_directory(staging, out);
  cleanup.release();
  return report;
}

/// Writes a LyCORIS or kohya file (`written.dialect`) after note_or_refuse, reads it back by
/// oft's reader and checks its blocks against `expected` (the round trip) before putting it
/// in place; nothing is left behind when a check throws.
inline void write_checked(const LycorisAdapter& written, const std::vector<Blocks>& expected,
                          DialectConvertReport& report, const DialectConvertOptions& options) {
  namespace fs = std::filesystem;
  note_or_refuse(report, options, "");
  const fs::path out = fs::absolute(options.out), staging = staging_file(out);
  RemoveFileOnFailure cleanup{staging};
  written.save(staging);
  const LycorisAdapter back = LycorisAdapter::load(staging, LycorisAdapter::Dialect::Detect);
  double achieved = 0.0;
  for (std::size_t i = 0; i < back.modules.size(); ++i)
    achieved = std::max(achieved, max_entry_change(lycoris_blocks(back.modules[i]), expected[i]));
  if (back.dialect != written.dialect) achieved = HUGE_VAL;
  check_round_trip(report, options.tolerance, achieved);
  fs::rename(staging, out);
  cleanup.armed = false;
}

/// kohya file -> LyCORIS file (kohya's constraint folded into the blocks).
inline DialectConvertReport kohya_to_lycoris(const DialectConvertOptions& options) {
  const LycorisAdapter source =
      LycorisAdapter::load(options.adapter, LycorisAdapter::Dialect::Kohya);
  LycorisAdapter written;
  written.dialect = LycorisAdapter::Dialect::Lycoris;
  written.metadata = source.metadata;
  DialectConvertReport report;
  std::vector<Blocks> expected;
  for (const LycorisDiagOftModule& m : source.modules) {
    const std::vector<LycorisDiagOftModule> parts =
        m.splits.empty() ? std::vector<LycorisDiagOftModule>{m} : m.splits;
    LycorisDiagOftModule o;
    o.name = m.name.rfind(LycorisAdapter::kKohyaPrefix, 0) == 0
                 ? "lora_unet_" + m.name.substr(std::string(LycorisAdapter::kKohyaPrefix).size())
                 : m.name;
    o.block_size = parts.front().block_size;
    o.alpha = 0.0f;  // LyCORIS: alpha <= 0 is no constraint; kohya's factor is in the blocks
    o.rule = lycoris::ConstraintRule::Lycoris;
    Blocks want;
    for (const LycorisDiagOftModule& p : parts) {
      if (p.block_size != o.block_size)
        refuse(oft::detail::message("kohya FLUX module '", m.name,
                                    "' has splits of b=", o.block_size, " and b=", p.block_size,
                                    ": a LyCORIS module holds one block size ([k, b, b])"));
      const std::vector<double> b(p.oft_blocks.begin(), p.oft_blocks.end());
      const lycoris::DiagOft<double> op(p.blocks, p.block_size, b.data(), double(p.alpha), {}, 1.0,
                                        lycoris::ConstraintRule::Kohya);
      const float f = static_cast<float>(op.constraint().factor);
      for (const float v : p.oft_blocks) o.oft_blocks.push_back(f * v);
      o.blocks += p.blocks;
      for (Index i = 0; i < p.blocks; ++i) want.emplace_back(op.block(i));
    }
    const Blocks got = lycoris_blocks(o);
    std::string note = "kohya's constraint factor folded into oft_blocks, alpha = 0 (off)";
    if (!m.splits.empty())
      note +=
          oft::detail::message("; ", m.splits.size(), " FLUX splits in row order as one module");
    report.modules.push_back({m.name, o.name, max_entry_change(got, want), note});
    expected.push_back(std::move(want));
    written.modules.push_back(std::move(o));
  }
  write_checked(written, expected, report, options);
  return report;
}

/// LyCORIS diag-OFT file -> kohya file (LyCORIS's constraint folded into the blocks).
inline DialectConvertReport lycoris_to_kohya(const DialectConvertOptions& options) {
  const std::string unet_prefix = "lora_unet_";
  const LycorisAdapter source =
      LycorisAdapter::load(options.adapter, LycorisAdapter::Dialect::Lycoris);
  LycorisAdapter written;
  written.dialect = LycorisAdapter::Dialect::Kohya;
  written.metadata = source.metadata;
  DialectConvertReport report;
  std::vector<Blocks> expected;
  for (const LycorisDiagOftModule& m : source.modules) {
    if (m.name.rfind(unet_prefix, 0) != 0)
      refuse(oft::detail::message("module '", m.name, "': kohya's OFT names only U-Net modules ('",
                                  LycorisAdapter::kKohyaPrefix, "<path>', from LyCORIS's '",
                                  unet_prefix, "<path>'); it has no name for this one"));
    double rescale_change = 0.0;
    for (const float r : m.rescale) rescale_change = std::max(rescale_change, std::abs(double(r) - 1.0));
    if (rescale_change > 0.0)
      refuse(oft::detail::message("module '", m.name, "' has a rescale (largest |r - 1| = ",
                                  rescale_change, "): kohya's OFT has none"));
    LycorisDiagOftModule o;
    o.name = LycorisAdapter::kKohyaPrefix + m.name.substr(unet_prefix.size());
    o.blocks = m.blocks;
    o.block_size = m.block_size;
    o.rule = lycoris::ConstraintRule::Kohya;
    const std::vector<double> b(m.oft_blocks.begin(), m.oft_blocks.end());
    const lycoris::DiagOft<double> op(m.blocks, m.block_size, b.data(), double(m.alpha), {}, 1.0,
                                      lycoris::ConstraintRule::Lycoris);
    const float f = static_cast<float>(op.constraint().factor);
    double squares = 0.0;  // ||Q||_F^2 of the folded blocks, Q = B - B^T
    for (Index i = 0; i < m.blocks; ++i)
      for (Index p = 0; p < m.block_size; ++p)
        for (Index q = 0; q < m.block_size; ++q) {
          const std::size_t at = std::size_t((i * m.block_size + p) * m.block_size + q);
          const std::size_t mirror = std::size_t((i * m.block_size + q) * m.block_size + p);
          const double d = double(f * m.oft_blocks[at]) - double(f * m.oft_blocks[mirror]);
          squares += d * d;
        }
    for (const float v : m.oft_blocks) o.oft_blocks.push_back(f * v);
    // alpha * out at least twice the norm: kohya's min(n, c) is n, its factor exactly 1.
    o.alpha = 1.0f;
    while (double(o.alpha) * double(m.out_features()) < 2.0 * std::sqrt(squares)) o.alpha *= 2.0f;
    Blocks want;
    for (Index i = 0; i < m.blocks; ++i) want.emplace_back(op.block(i));
    const Blocks got = lycoris_blocks(o);
    std::string note = oft::detail::message(
        op.constraint().active ? "LyCORIS's constraint factor folded into oft_blocks"
                               : "LyCORIS's constraint does not bind",
        "; alpha = ", o.alpha, " (kohya's rule then leaves Q unchanged)");
    if (m.rescaled()) note += "; a rescale of ones dropped";
    report.modules.push_back({m.name, o.name, max_entry_change(got, want), note});
    expected.push_back(std::move(want));
    written.modules.push_back(std::move(o));
  }
  write_checked(written, expected, report, options);
  return report;
}

/// The side refusal, with max |R - I| measured over the source's blocks.
[[noreturn]] inline void refuse_side(const DialectConvertOptions& options, Dialect from,
                                     double distance) {
  const bool from_output = from == Dialect::Lycoris || from == Dialect::Kohya;
  refuse(oft::detail::message(
      dialect_name(from), " -> ", dialect_name(options.to), ": ",
      from_output ? "the source rotates a layer's OUTPUT channels (W' = R^T W), the target its "
                    "INPUT (W' = W R^T)"
                  : "the source rotates a layer's INPUT (W' = W R^T), the target its OUTPUT "
                    "channels (W' = R^T W)",
      "; both hold for every W only when R = I, and this adapter's largest entry of R - I is ",
      distance,
      ". No file of the other side carries it: merge it into the weights instead "
      "(oft merge)"));
}

}  // namespace detail

/// Runs the conversion (see the file comment). Throws std::invalid_argument (a refused or
/// undefined conversion, bad options), format_error or std::system_error; nothing is written
/// when it throws.
inline DialectConvertReport convert_dialect(const DialectConvertOptions& options) {
  namespace fs = std::filesystem;
  using detail::refuse;
  if (options.to != Dialect::PeftOft && options.to != Dialect::Lycoris &&
      options.to != Dialect::Kohya && options.to != Dialect::OneTrainer)
    refuse(oft::detail::message("--to ", dialect_name(options.to),
                                ": oft writes peft (OFT), lycoris, kohya and onetrainer files"));
  if (fs::exists(options.out) && !options.force)
    throw std::invalid_argument("oft: output '" + options.out +
                                "' exists (pass --force to replace it)");
  const Dialect from = resolve_dialect(options.adapter, options.from);
  const auto done = [&](DialectConvertReport r) {
    r.from = from;
    r.to = options.to;
    return r;
  };
  if (from == options.to || (is_peft(from) && options.to == Dialect::PeftOft))
    refuse(oft::detail::message("the adapter is already ", dialect_name(from),
                                from == Dialect::PeftOft
                                    ? " (for PEFT forms: --expand-block-share, --generators-dtype, "
                                      "--to-current-polynomial)"
                                    : ""));
  if (from == Dialect::PeftBoft || from == Dialect::PeftHra)
    refuse(oft::detail::message(dialect_name(from), " -> ", dialect_name(options.to),
                                ": no other dialect has PEFT's butterfly or Householder "
                                "structure"));
  if (from == Dialect::PeftOft && options.to == Dialect::OneTrainer)
    return done(detail::peft_to_onetrainer(options));
  if (from == Dialect::OneTrainer && options.to == Dialect::PeftOft)
    return done(detail::onetrainer_to_peft(options));
  if (from == Dialect::Lycoris || from == Dialect::Kohya) {
    const LycorisAdapter source = LycorisAdapter::load(
        dialect_tensor_file(options.adapter),
        from == Dialect::Kohya ? LycorisAdapter::Dialect::Kohya : LycorisAdapter::Dialect::Lycoris);
    for (const LycorisDiagOftModule& m : source.modules)
      if (m.boft())
        refuse(oft::detail::message(
            "module '", m.name, "' is LyCORIS BOFT (", m.stages,
            " stages): no other dialect "
            "has its butterfly (R, not R^T, and its own permutation; PEFT's BOFT differs)"));
    if (from == Dialect::Kohya && options.to == Dialect::Lycoris)
      return done(detail::kohya_to_lycoris(options));
    if (from == Dialect::Lycoris && options.to == Dialect::Kohya)
      return done(detail::lycoris_to_kohya(options));
    double distance = 0.0;
    for (const LycorisDiagOftModule& m : source.modules)
      for (const LycorisDiagOftModule& p :
           m.splits.empty() ? std::vector<LycorisDiagOftModule>{m} : m.splits)
        distance = std::max(distance, detail::identity_distance(detail::lycoris_blocks(p)));
    detail::refuse_side(options, from, distance);
  }
  // PEFT OFT or OneTrainer -> LyCORIS or kohya.
  double distance = 0.0;
  if (from == Dialect::OneTrainer) {
    for (const OneTrainerModule& m : OneTrainerAdapter::load(options.adapter).modules)
      distance = std::max(distance, detail::identity_distance(m.rotations()));
  } else {
    const PeftOftAdapter peft = PeftOftAdapter::load(options.adapter);
    for (const PeftOftModule& m : peft.modules)
      distance = std::max(distance, detail::identity_distance(detail::peft_blocks(
                                        peft.config, peft.effective_generators(m))));
  }
  detail::refuse_side(options, from, distance);
}

}  // namespace oft::io
