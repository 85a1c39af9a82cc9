#pragma once
/// \file io/peft_family_adapter.hpp
/// Hugging Face PEFT BOFT and HRA adapters in and out (peft 0.21.2, `tuners/boft/layer.py` and
/// `tuners/hra/layer.py`; docs/families.md has the math, docs/io.md the format):
///
///   auto adapter = oft::io::PeftFamilyAdapter::load("my_boft_adapter/");
///   for (const auto& m : adapter.modules)
///     oft::RowMatrix<double> merged = adapter.merge<double>(m, w0);  // PEFT's merge_and_unload
///
/// BOFT (`peft_type: "BOFT"`): per Linear module `<m>.boft_R` [m, N, b, b] (dense; PEFT uses its
/// skew part) and `<m>.boft_s` [n_out, 1]. The merge is PEFT's W' = diag(s) W0 M^T with M the
/// butterfly product (oft::Butterfly over oft::peft::boft_generators). m, N and b come from the
/// tensor: PEFT 0.21.2 replaces the config's boft_n_butterfly_factor by 1 whenever its CUDA
/// extension fails to build (any machine without CUDA), so an adapter trained there holds
/// [1, N, b, b] under a config that asks for more factors. The config value is m itself (PEFT
/// subtracts 1 internally, "to be consistent with the paper notation"); a tensor with m factors
/// is accepted when m equals it, or m = 1 (that fallback). boft_block_size / boft_block_num, when
/// non-zero, must agree with b / N.
///
/// HRA (`peft_type: "HRA"`): per Linear module `<m>.hra_u` [d, r], r equal to the config's r,
/// apply_GS from the config. The merge is PEFT's W' = W0 R_H (oft::Householder).
///
/// Refused, with a message naming the file, tensor or field and the values (format_error, an
/// std::invalid_argument, for the layout; std::domain_error for values): another peft_type,
/// bias other than "none" (the adapter would carry bias tensors), fan_in_fan_out (GPT-2's Conv1D
/// layout; PEFT itself turns it off for nn.Linear), any other tensor (modules_to_save, a Conv2d
/// adapter is caught at merge by its 4-D base), shapes that do not factor (b odd or N odd with
/// m > 1, N not a multiple of 2^(m-1)), r > d with apply_GS, a non-finite value, a zero column
/// of hra_u (or a zero Gram-Schmidt residual), boft_s of the wrong length. Every module is
/// checked by building its double-precision operator when loaded.
///
/// A merge has no strength (PEFT defines none for these families); unmerge is the true inverse,
/// W0 = diag(1/s) W' M^-T for BOFT (refused for a zero s), W' R_H^T for HRA.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../butterfly.hpp"
#include "../cayley.hpp"  // ExactCayley's rotation, which the butterfly's blocks use
#include "../householder.hpp"
#include "../peft_butterfly.hpp"
#include "../policies.hpp"
#include "detail/adapter_files.hpp"
#include "safetensors_reader.hpp"
#include "safetensors_writer.hpp"

namespace oft::io {

/// The PEFT families read here.
enum class PeftFamily {
  Boft,  ///< peft_type "BOFT"
  Hra,   ///< peft_type "HRA"
};

/// "BOFT" or "HRA", PEFT's peft_type.
inline const char* peft_type_name(PeftFamily family) { return family == PeftFamily::Boft ? "BOFT" : "HRA"; }

/// The peft_type of `directory`/adapter_config.json, or "" when the file cannot be read, is not
/// a JSON object or has no string peft_type (the reader that is then used says why).
inline std::string peft_type_of(const std::filesystem::path& directory) {
  std::ifstream in(directory / "adapter_config.json");
  if (!in) return "";
  std::stringstream text;
  text << in.rdbuf();
  const auto json = nlohmann::ordered_json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!json.is_object() || !json.contains("peft_type") || !json.at("peft_type").is_string()) return "";
  return json.at("peft_type").get<std::string>();
}

/// Whether `peft_type` is read by PeftFamilyAdapter (BOFT or HRA).
inline bool is_peft_family_type(const std::string& peft_type) { return peft_type == "BOFT" || peft_type == "HRA"; }

/// The fields of adapter_config.json that decide the math.
struct PeftFamilyConfig {
  PeftFamily family = PeftFamily::Boft;
  std::string peft_version;  ///< empty when absent
  // BOFT
  Index boft_block_size = 0;          ///< b, or 0 when given by boft_block_num
  Index boft_block_num = 0;           ///< N, or 0 when given by boft_block_size
  Index boft_n_butterfly_factor = 1;  ///< m as configured (a tensor may hold 1, see the file comment)
  double boft_dropout = 0.0;          ///< training only (multiplicative dropout of blocks)
  // HRA
  Index r = 0;  ///< reflections
  bool apply_GS = false;
  // both
  std::string bias = "none";
  bool fan_in_fan_out = false;
  std::vector<std::string> target_modules;
  nlohmann::ordered_json raw;  ///< the whole file, written back by save()
};

/// One adapted Linear module, its tensors as stored (values widened to double: exact for F64,
/// F32, F16 and BF16, and written back in `dtype`).
struct PeftFamilyModule {
  std::string name;  ///< module path without PEFT's "base_model.model." prefix
  Index features = 0;  ///< d, the base weight's columns
  Dtype dtype = Dtype::F32;  ///< the stored dtype of the module's tensors
  // BOFT
  ButterflySpec butterfly;      ///< m from boft_R.shape[0], N, b
  std::vector<double> boft_R;   ///< [m, N, b, b], C order
  std::vector<double> boft_s;   ///< [n_out]
  // HRA
  Index reflections = 0;       ///< r
  std::vector<double> hra_u;   ///< [d, r], C order

  /// Rows of the base weight this module fits (BOFT: n_out from boft_s; HRA: any, 0).
  Index out_features() const { return static_cast<Index>(boft_s.size()); }
  /// Numbers stored in the adapter for this module (what PEFT trains).
  Index parameters() const { return static_cast<Index>(boft_R.size() + boft_s.size() + hra_u.size()); }
};

class PeftFamilyAdapter {
 public:
  PeftFamilyConfig config;
  std::vector<PeftFamilyModule> modules;

  PeftFamily family() const { return config.family; }

  /// Reads `directory`/adapter_config.json and `directory`/adapter_model.safetensors and checks
  /// every module (see the file comment for what is refused).
  static PeftFamilyAdapter load(const std::filesystem::path& directory) {
    PeftFamilyAdapter adapter;
    adapter.config = read_config(directory / "adapter_config.json");
    const SafetensorsFile file = SafetensorsFile::open(directory / "adapter_model.safetensors");
    const std::string where = file.path().string();
    const char* first = adapter.config.family == PeftFamily::Boft ? kBoftR : kHraU;
    for (const std::string& key : file.tensor_names()) {
      if (!detail::ends_with(key, first) && !(adapter.config.family == PeftFamily::Boft && detail::ends_with(key, kBoftS)))
        detail::fail(where, "tensor ", detail::quote_name(key), " is no ", peft_type_name(adapter.config.family),
                     " tensor (expected <module>",
                     adapter.config.family == PeftFamily::Boft ? ".boft_R and <module>.boft_s" : ".hra_u",
                     "; modules_to_save and trained biases are not read)");
      if (detail::ends_with(key, first)) adapter.modules.push_back(read_module(file, key, adapter.config));
    }
    if (adapter.config.family == PeftFamily::Boft)  // every boft_s belongs to a boft_R
      for (const std::string& key : file.tensor_names())
        if (detail::ends_with(key, kBoftS) && !file.contains(key.substr(0, key.size() - std::strlen(kBoftS)) + kBoftR))
          detail::fail(where, "tensor ", detail::quote_name(key), " has no ", kBoftR + 1, " beside it");
    if (adapter.modules.empty()) detail::fail(where, "holds no ", peft_type_name(adapter.config.family), " module");
    return adapter;
  }

  /// The module called `name` (throws std::out_of_range naming it).
  const PeftFamilyModule& module(const std::string& name) const {
    for (const PeftFamilyModule& m : modules)
      if (m.name == name) return m;
    throw std::out_of_range(oft::detail::message("oft: the adapter has no module '", name, "'"));
  }

  /// Module m's butterfly M (BOFT): exact Cayley blocks from PEFT's boft_R.
  template <class Scalar>
  static Butterfly<Scalar, ExactCayley> butterfly(const PeftFamilyModule& m) {
    Butterfly<Scalar, ExactCayley> operator_(m.butterfly);
    Generators<Scalar> theta(m.butterfly.generators(), m.butterfly.block_size);
    peft::boft_generators(m.boft_R.data(), m.butterfly, theta.view());
    operator_.set_generators(theta);
    return operator_;
  }

  /// Module m's Householder product R_H (HRA), with Gram-Schmidt when apply_GS.
  template <class Scalar>
  Householder<Scalar> householder(const PeftFamilyModule& m) const {
    Householder<Scalar> operator_(m.features, m.reflections, config.apply_GS);
    std::vector<Scalar> u(m.hra_u.begin(), m.hra_u.end());
    operator_.set_vectors(ConstMatrixView<Scalar>(u.data(), m.features, m.reflections));
    return operator_;
  }

  /// Throws std::invalid_argument unless a rows x cols base weight fits module `m`: d = cols,
  /// and for BOFT n_out = rows (boft_s scales the output rows).
  static void check_base(const PeftFamilyModule& m, Index rows, Index cols) {
    oft::detail::require(cols == m.features && (m.boft_s.empty() || rows == m.out_features()), "module '", m.name,
                         "': base weight is ", rows, "x", cols, ", but the adapter needs ",
                         m.boft_s.empty() ? std::string("any") : std::to_string(m.out_features()), "x", m.features,
                         "; a Conv2d adapter, or another model's?");
  }

  /// What PEFT's merge gives for module `m` over its frozen weight W0 [n_out, d] (row-major):
  /// BOFT diag(s) W0 M^T, HRA W0 R_H.
  template <class Scalar>
  RowMatrix<Scalar> merge(const PeftFamilyModule& m, ConstMatrixView<Scalar> weight) const {
    check_base(m, weight.rows(), weight.cols());
    RowMatrix<Scalar> out(weight.rows(), weight.cols());
    if (config.family == PeftFamily::Hra) {
      householder<Scalar>(m).apply_transposed(weight, view(out));
      return out;
    }
    butterfly<Scalar>(m).apply_transposed(weight, view(out));
    for (Index i = 0; i < out.rows(); ++i) out.row(i) *= static_cast<Scalar>(m.boft_s[static_cast<std::size_t>(i)]);
    return out;
  }

  /// The true inverse of merge: BOFT W0 = diag(1/s) W' M^-T (std::domain_error for a zero s),
  /// HRA W0 = W' R_H^T.
  template <class Scalar>
  RowMatrix<Scalar> unmerge(const PeftFamilyModule& m, ConstMatrixView<Scalar> merged) const {
    check_base(m, merged.rows(), merged.cols());
    RowMatrix<Scalar> out(merged.rows(), merged.cols());
    if (config.family == PeftFamily::Hra) {
      householder<Scalar>(m).apply(merged, view(out));
      return out;
    }
    for (std::size_t i = 0; i < m.boft_s.size(); ++i)
      oft::detail::require_domain(m.boft_s[i] != 0.0, "module '", m.name, "': boft_s[", i,
                                  "] is 0, so the merge cannot be undone");
    butterfly<Scalar>(m).apply_inverse(merged, view(out), /*transposed=*/true);
    for (Index i = 0; i < out.rows(); ++i) out.row(i) /= static_cast<Scalar>(m.boft_s[static_cast<std::size_t>(i)]);
    return out;
  }

  /// Writes adapter_config.json (the file read, as it was) and adapter_model.safetensors (every
  /// tensor in its stored dtype and shape; metadata {"format": "pt"}) that PEFT loads. Each file
  /// is written atomically.
  void save(const std::filesystem::path& directory) const {
    SafetensorsWriter writer;
    std::vector<std::vector<std::byte>> storage;
    storage.reserve(2 * modules.size());  // the writer keeps pointers into these
    const auto add = [&](const std::string& key, std::vector<std::uint64_t> shape, const std::vector<double>& values,
                         Dtype dtype) {
      storage.push_back(encode(values, dtype));
      writer.add(key, dtype, std::move(shape), storage.back().data(), storage.back().size());
    };
    for (const PeftFamilyModule& m : modules) {
      const std::string stem = std::string(kPrefix) + m.name;
      if (config.family == PeftFamily::Hra) {
        add(stem + kHraU, {u64(m.features), u64(m.reflections)}, m.hra_u, m.dtype);
        continue;
      }
      const ButterflySpec& s = m.butterfly;
      add(stem + kBoftR, {u64(s.factors), u64(s.blocks), u64(s.block_size), u64(s.block_size)}, m.boft_R, m.dtype);
      add(stem + kBoftS, {u64(m.out_features()), 1}, m.boft_s, m.dtype);
    }
    writer.add_metadata("format", "pt");
    std::filesystem::create_directories(directory);
    writer.write(directory / "adapter_model.safetensors");
    detail::write_text_atomically(directory / "adapter_config.json", config.raw.dump(2) + "\n");
  }

 private:
  static constexpr const char* kPrefix = "base_model.model.";
  static constexpr const char* kBoftR = ".boft_R";
  static constexpr const char* kBoftS = ".boft_s";
  static constexpr const char* kHraU = ".hra_u";

  static std::uint64_t u64(Index v) { return static_cast<std::uint64_t>(v); }

  static std::vector<std::byte> encode(const std::vector<double>& values, Dtype dtype) {
    std::vector<std::byte> out(values.size() * static_cast<std::size_t>(dtype_bits(dtype) / 8));
    for (std::size_t i = 0; i < values.size(); ++i) {
      const auto f = static_cast<float>(values[i]);
      if (dtype == Dtype::F64) {
        std::memcpy(out.data() + 8 * i, &values[i], 8);
      } else if (dtype == Dtype::F32) {
        std::memcpy(out.data() + 4 * i, &f, 4);
      } else {
        const std::uint16_t bits = dtype == Dtype::F16 ? float_to_f16(f) : float_to_bf16(f);
        std::memcpy(out.data() + 2 * i, &bits, 2);
      }
    }
    return out;
  }

  // Integer fields take JSON integers in [0, 2^31) only (get<int>() of 2.5 would truncate).
  static Index count_field(const nlohmann::ordered_json& json, const char* key, const std::string& where,
                           Index fallback) {
    if (!json.contains(key) || json.at(key).is_null()) return fallback;
    const auto& value = json.at(key);
    const bool ok = value.is_number_integer() && value.get<std::int64_t>() >= 0 &&
                    value.get<std::int64_t>() <= std::numeric_limits<std::int32_t>::max();
    if (!ok) detail::fail(where, "field '", key, "' is ", value.dump(), ", expected an integer >= 0");
    return static_cast<Index>(value.get<std::int64_t>());
  }

  static PeftFamilyConfig read_config(const std::filesystem::path& path) {
    const std::string where = path.string();
    std::ifstream in(path);
    if (!in) detail::fail(where, "cannot be read");
    std::stringstream text;
    text << in.rdbuf();
    PeftFamilyConfig config;
    try {
      config.raw = nlohmann::ordered_json::parse(text.str());
    } catch (const nlohmann::json::exception& e) {
      detail::fail(where, "not JSON (", e.what(), ")");
    }
    const auto& json = config.raw;
    if (!json.is_object()) detail::fail(where, "not a JSON object");
    const std::string type = detail::config_field<std::string>(json, "peft_type", where, "");
    if (!is_peft_family_type(type)) detail::fail(where, "peft_type is '", type, "', expected 'BOFT' or 'HRA'");
    config.family = type == "BOFT" ? PeftFamily::Boft : PeftFamily::Hra;
    config.peft_version = detail::config_field<std::string>(json, "peft_version", where, "");
    config.bias = detail::config_field<std::string>(json, "bias", where, "none");
    config.fan_in_fan_out = detail::config_field<bool>(json, "fan_in_fan_out", where, false);
    if (json.contains("target_modules") && json.at("target_modules").is_string())
      config.target_modules = {json.at("target_modules").get<std::string>()};
    else
      config.target_modules = detail::config_field<std::vector<std::string>>(json, "target_modules", where, {});
    if (config.bias != "none")
      detail::fail(where, "bias is '", config.bias,
                   "': oft reads adapters with bias 'none' only (a trained bias is a tensor oft does not merge)");
    if (config.fan_in_fan_out)
      detail::fail(where, "fan_in_fan_out is true: oft reads nn.Linear adapters (weight [out, in]) only");
    if (config.family == PeftFamily::Boft) {
      config.boft_block_size = count_field(json, "boft_block_size", where, 0);
      config.boft_block_num = count_field(json, "boft_block_num", where, 0);
      config.boft_n_butterfly_factor = count_field(json, "boft_n_butterfly_factor", where, 1);
      config.boft_dropout = detail::config_field<double>(json, "boft_dropout", where, 0.0);
      if ((config.boft_block_size == 0) == (config.boft_block_num == 0))
        detail::fail(where, "boft_block_size ", config.boft_block_size, " and boft_block_num ", config.boft_block_num,
                     ": exactly one must be non-zero (PEFT's rule)");
      if (config.boft_n_butterfly_factor < 1)
        detail::fail(where, "boft_n_butterfly_factor is ", config.boft_n_butterfly_factor, ", expected >= 1");
    } else {
      config.r = count_field(json, "r", where, 0);
      config.apply_GS = detail::config_field<bool>(json, "apply_GS", where, false);
      if (config.r < 1) detail::fail(where, "r is ", config.r, ", expected a positive integer");
    }
    return config;
  }

  /// The values of a floating-point tensor, widened to double.
  static std::vector<double> values(const TensorView& t, const std::string& where) {
    if (t.dtype == Dtype::F64) return t.copy_as<double>();
    if (t.dtype != Dtype::F32 && t.dtype != Dtype::F16 && t.dtype != Dtype::BF16)
      detail::fail(where, "tensor ", detail::quote_name(t.name), " is ", dtype_name(t.dtype),
                   ", expected F32, F64, F16 or BF16");
    const std::vector<float> floats = t.to_floats();
    return {floats.begin(), floats.end()};
  }

  static void require_finite(const std::vector<double>& v, const std::string& key, const std::string& where) {
    for (std::size_t i = 0; i < v.size(); ++i)
      oft::detail::require_domain(std::isfinite(v[i]), where, ": tensor '", key, "' has the non-finite value ", v[i],
                                  " at flat index ", i);
  }

  // With apply_GS a column that lies in the span of the earlier ones leaves a Gram-Schmidt
  // residual of rounding noise, which PEFT normalizes into an arbitrary direction: refused when
  // the residual is below 64 d eps of the column (modified Gram-Schmidt in double).
  static void require_independent(const PeftFamilyModule& m, const std::string& key, const std::string& where) {
    const Index d = m.features, r = m.reflections;
    std::vector<double> q(static_cast<std::size_t>(d * r));
    for (Index i = 0; i < r; ++i) {
      std::vector<double> v(static_cast<std::size_t>(d));
      double norm2 = 0.0;
      for (Index p = 0; p < d; ++p) {
        v[static_cast<std::size_t>(p)] = m.hra_u[static_cast<std::size_t>(p * r + i)];
        norm2 += v[static_cast<std::size_t>(p)] * v[static_cast<std::size_t>(p)];
      }
      const double column = std::sqrt(norm2);
      for (Index j = 0; j < i; ++j) {
        double dot = 0.0;
        for (Index p = 0; p < d; ++p) dot += q[static_cast<std::size_t>(j * d + p)] * v[static_cast<std::size_t>(p)];
        for (Index p = 0; p < d; ++p) v[static_cast<std::size_t>(p)] -= dot * q[static_cast<std::size_t>(j * d + p)];
      }
      double residual2 = 0.0;
      for (const double x : v) residual2 += x * x;
      const double residual = std::sqrt(residual2);
      oft::detail::require_domain(
          residual > 64.0 * static_cast<double>(d) * std::numeric_limits<double>::epsilon() * column, where,
          ": tensor '", key, "' column ", i, " (norm ", column, ") lies in the span of the columns before it (Gram-Schmidt",
          " residual ", residual, "): apply_GS would normalize rounding noise");
      for (Index p = 0; p < d; ++p) q[static_cast<std::size_t>(i * d + p)] = v[static_cast<std::size_t>(p)] / residual;
    }
  }

  static std::string module_name(const std::string& key, const char* suffix) {
    const std::string stem = key.substr(0, key.size() - std::strlen(suffix));
    return stem.rfind(kPrefix, 0) == 0 ? stem.substr(std::strlen(kPrefix)) : stem;
  }

  static PeftFamilyModule read_module(const SafetensorsFile& file, const std::string& key,
                                      const PeftFamilyConfig& config) {
    const std::string where = file.path().string();
    const TensorView t = file.tensor(key);
    const std::string shape = detail::dims(t.shape);
    PeftFamilyModule m;
    m.dtype = t.dtype;
    if (config.family == PeftFamily::Hra) {
      m.name = module_name(key, kHraU);
      if (t.shape.size() != 2 || t.shape[0] < 1 || t.shape[1] < 1 ||
          t.shape[0] > u64(std::numeric_limits<std::int32_t>::max()))
        detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ", expected [d, r] with d, r >= 1");
      m.features = static_cast<Index>(t.shape[0]);
      m.reflections = static_cast<Index>(t.shape[1]);
      if (m.reflections != config.r)
        detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ", but the config's r is ", config.r);
      if (config.apply_GS && m.reflections > m.features)
        detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ": r = ", m.reflections,
                     " > d = ", m.features, " with apply_GS (Gram-Schmidt cannot make more than d orthonormal vectors)");
      m.hra_u = values(t, where);
      require_finite(m.hra_u, key, where);
      for (Index i = 0; i < m.reflections; ++i) {
        double norm2 = 0.0;
        for (Index p = 0; p < m.features; ++p) {
          const double v = m.hra_u[static_cast<std::size_t>(p * m.reflections + i)];
          norm2 += v * v;
        }
        oft::detail::require_domain(norm2 > 0.0, where, ": tensor '", key, "' column ", i,
                                    " is zero: no Householder reflection");
      }
      if (config.apply_GS) require_independent(m, key, where);
      try {  // the Gram-Schmidt pass meets exactly zero residuals only here
        PeftFamilyAdapter probe;
        probe.config = config;
        (void)probe.householder<double>(m);
      } catch (const std::domain_error& e) {
        throw std::domain_error(oft::detail::message("oft: ", where, ": tensor '", key, "': ", e.what()));
      }
      return m;
    }

    m.name = module_name(key, kBoftR);
    if (t.shape.size() != 4 || t.shape[2] != t.shape[3] || t.shape[0] < 1 || t.shape[1] < 1 || t.shape[2] < 1 ||
        t.shape[0] > 62 || t.shape[1] > u64(std::numeric_limits<std::int32_t>::max()) ||
        t.shape[2] > u64(kMaxBlockSize))
      detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ", expected [m, N, b, b] with m in [1, 62]",
                   ", b in [1, ", kMaxBlockSize, "]");
    m.butterfly = ButterflySpec{static_cast<Index>(t.shape[1]), static_cast<Index>(t.shape[2]),
                                static_cast<Index>(t.shape[0])};
    const ButterflySpec& s = m.butterfly;
    if (s.factors != config.boft_n_butterfly_factor && s.factors != 1)
      detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ": m = ", s.factors,
                   " factors, but boft_n_butterfly_factor is ", config.boft_n_butterfly_factor,
                   " (PEFT stores that many, or 1 where its CUDA extension was missing)");
    if (config.boft_block_size != 0 && s.block_size != config.boft_block_size)
      detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ": b = ", s.block_size,
                   ", but boft_block_size is ", config.boft_block_size);
    if (config.boft_block_num != 0 && s.blocks != config.boft_block_num)
      detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ": N = ", s.blocks,
                   ", but boft_block_num is ", config.boft_block_num);
    try {
      s.validate();
    } catch (const std::invalid_argument& e) {
      detail::fail(where, "tensor ", detail::quote_name(key), " is ", shape, ": ", e.what());
    }
    m.features = s.features();
    m.boft_R = values(t, where);
    require_finite(m.boft_R, key, where);

    const std::string scale_key = key.substr(0, key.size() - std::strlen(kBoftR)) + kBoftS;
    if (!file.contains(scale_key))
      detail::fail(where, "tensor ", detail::quote_name(key), " has no ", detail::quote_name(scale_key), " beside it");
    const TensorView st = file.tensor(scale_key);
    if (st.shape.size() != 2 || st.shape[1] != 1 || st.shape[0] < 1 ||
        st.shape[0] > u64(std::numeric_limits<std::int32_t>::max()))
      detail::fail(where, "tensor ", detail::quote_name(scale_key), " is ", detail::dims(st.shape),
                   ", expected [n_out, 1]");
    if (st.dtype != t.dtype)
      detail::fail(where, "tensor ", detail::quote_name(scale_key), " is ", dtype_name(st.dtype), " but ",
                   detail::quote_name(key), " is ", dtype_name(t.dtype));
    m.boft_s = values(st, where);
    require_finite(m.boft_s, scale_key, where);
    (void)butterfly<double>(m);  // the exact Cayley of every block (cannot fail for a finite skew part)
    return m;
  }
};

}  // namespace oft::io
