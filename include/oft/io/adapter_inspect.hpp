#pragma once
/// \file io/adapter_inspect.hpp
/// inspect_adapter(): what `oft inspect ADAPTER` reports on a PEFT OFT adapter, per module: the
/// generators, b, shared, rho = ||Q||_2, the orthogonality error and the distance to exact Cayley
/// of every block under the adapter's own policy (worst and median), whether a Cayley-Neumann
/// series diverges, and the k a tolerance needs. Every number is in double, from the generators
/// as PEFT uses them (COFT-projected when on).
///
/// On a PEFT BOFT or HRA adapter (io/peft_family_adapter.hpp) the report says the family and,
/// per module: d, n_out (BOFT), m, N, b (BOFT) or r and apply_GS (HRA), the numbers stored,
/// the bytes they take and the bytes a dense d x d float32 rotation would, the orthogonality error
/// ||R^T R - I||_2 of the effective rotation in double (BOFT: per block, worst and median; rho
/// = ||S||_2 of each block's skew part too; HRA: of the whole product, from r x r matrices), and
/// the range of BOFT's output scale boft_s.

#include "../detail/intrinsics.hpp"  // before Eigen (GCC 12)

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft_adapter.hpp"
#include "peft_family_adapter.hpp"

namespace oft::io {

/// Worst and median of a list (both 0 for an empty list).
struct Spread {
  double worst = 0.0;
  double median = 0.0;
};

/// One adapted module.
struct ModuleReport {
  std::string name;
  std::string kind;      ///< "linear" or "embedding"
  Index generators = 0;  ///< rows of theta
  Index block_size = 0;
  bool shared = false;
  Spread rho;             ///< ||Q_g||_2 over generators
  Spread orthogonality;   ///< ||R_g^T R_g - I||_2 over generators, R under the adapter's policy
  Spread distance;        ///< ||R_g - Cayley(Q_g)||_2 over generators
  bool diverges = false;  ///< some rho >= 1: a Cayley–Neumann series diverges there
  int terms_for_tolerance = -1;  ///< smallest k with rho^(k+1) <= tol for the worst rho; -1: none
  std::uint64_t served_bytes = 0;  ///< OFT: what an AdapterBank keeps resident (float32 R blocks)
  // BOFT and HRA only (zero for OFT)
  Index features = 0;              ///< d
  Index out_features = 0;          ///< BOFT: n_out, the length of boft_s
  Index factors = 0;               ///< BOFT: m butterfly factors
  Index blocks = 0;                ///< BOFT: N blocks per factor
  Index reflections = 0;           ///< HRA: r
  bool gram_schmidt = false;       ///< HRA: apply_GS
  Index parameters = 0;            ///< numbers stored for the module
  std::uint64_t stored_bytes = 0;  ///< bytes of its tensors in the adapter file
  std::uint64_t dense_bytes = 0;   ///< bytes of a dense d x d float32 rotation (never formed)
  double scale_min = 0.0, scale_max = 0.0;  ///< BOFT: the range of boft_s
};

/// The whole adapter.
struct AdapterReport {
  std::string family = "OFT";  ///< PEFT's peft_type: "OFT", "BOFT" or "HRA"
  std::string peft_version;  ///< "" when absent
  std::string polynomial;    ///< "current" or "legacy (PEFT < 0.18)", or "exact Cayley"
  std::string policy;        ///< policy name
  int num_cayley_neumann_terms = 0;
  int truncation_k = -1;  ///< k of R_k when PEFT's polynomial is a truncation, else -1
  bool coft = false;
  double eps = 0.0;
  bool block_share = false;
  double tolerance = 0.0;
  std::vector<ModuleReport> modules;

  /// OFT: bytes the adapter's modules take resident when served (AdapterBank, float32 R).
  std::uint64_t served_bytes() const {
    std::uint64_t total = 0;
    for (const auto& m : modules) total += m.served_bytes;
    return total;
  }
};

namespace detail {

inline Spread spread(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  const double median = n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
  return {values.back(), median};
}

inline double spectral_norm(const RowMatrix<double>& m) {
  const Eigen::MatrixXd gram = m.transpose() * m;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram, Eigen::EigenvaluesOnly);
  return std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
}

inline ModuleReport inspect_module(const PeftOftAdapter& adapter, const PeftOftModule& m,
                                   double tolerance) {
  ModuleReport report;
  report.name = m.name;
  report.kind = m.kind == PeftModuleKind::Linear ? "linear" : "embedding";
  report.generators = m.theta.count();
  report.block_size = m.spec.block_size;
  report.shared = m.spec.shared;
  // AdapterBank keeps R itself, one float32 b x b block per generator (adapter_bank.hpp).
  report.served_bytes = static_cast<std::uint64_t>(m.spec.generators()) *
                        static_cast<std::uint64_t>(m.spec.block_size * m.spec.block_size) * 4;

  const Generators<float> effective = adapter.effective_generators(m);
  Generators<double> theta(effective.count(), effective.block_size());
  theta.values() = effective.values().cast<double>();
  const BlockSpec spec{theta.count(), theta.block_size(), false};  // one block per generator
  AnyBlockOrthogonal<double> rotation(spec, adapter.config.policy());
  BlockOrthogonal<double, ExactCayley> cayley(spec);
  rotation.set_generators(theta);
  cayley.set_generators(theta);

  std::vector<double> rho, orthogonality = rotation.orthogonality_errors(), distance;
  for (Index g = 0; g < theta.count(); ++g) {
    rho.push_back(oft::detail::skew_spectral_norm(SquareMatrix<double>(theta.dense(g))));
    distance.push_back(spectral_norm(rotation.block(g) - cayley.block(g)));
  }
  report.rho = spread(rho);
  report.orthogonality = spread(orthogonality);
  report.distance = spread(distance);
  report.diverges = report.rho.worst >= 1.0;
  report.terms_for_tolerance =
      neumann_terms_for_distance(report.rho.worst, tolerance, 1, kMaxNeumannTerms);
  return report;
}

/// ||R^T R - I||_2 of HRA's R = I - Q T Q^T (either orientation) from r x r matrices: with
/// G = Q^T Q, R^T R - I = Q K Q^T, K = T^T G T - T - T^T, whose non-zero eigenvalues are those
/// of G^(1/2) K G^(1/2).
inline double householder_orthogonality(const Householder<double>& hra) {
  const Eigen::MatrixXd q = hra.vectors(), t = hra.triangular_factor();
  const Eigen::MatrixXd g = q.transpose() * q;
  const Eigen::MatrixXd k = t.transpose() * g * t - t - t.transpose();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> gram(g);
  const Eigen::VectorXd roots = gram.eigenvalues().cwiseMax(0.0).cwiseSqrt();
  const Eigen::MatrixXd half = gram.eigenvectors() * roots.asDiagonal() * gram.eigenvectors().transpose();
  const Eigen::MatrixXd m = half * k * half;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(0.5 * (m + m.transpose()), Eigen::EigenvaluesOnly);
  return eig.eigenvalues().cwiseAbs().maxCoeff();
}

inline ModuleReport inspect_family_module(const PeftFamilyAdapter& adapter, const PeftFamilyModule& m) {
  ModuleReport report;
  report.name = m.name;
  report.kind = "linear";
  report.features = m.features;
  report.parameters = m.parameters();
  report.stored_bytes = static_cast<std::uint64_t>(m.parameters()) * (dtype_bits(m.dtype) / 8);
  report.dense_bytes = static_cast<std::uint64_t>(m.features) * static_cast<std::uint64_t>(m.features) * 4;
  if (adapter.family() == PeftFamily::Hra) {
    report.reflections = m.reflections;
    report.gram_schmidt = adapter.config.apply_GS;
    report.generators = m.reflections;
    const double error = householder_orthogonality(adapter.householder<double>(m));
    report.orthogonality = {error, error};
    return report;
  }
  const ButterflySpec& s = m.butterfly;
  report.out_features = m.out_features();
  report.factors = s.factors;
  report.blocks = s.blocks;
  report.block_size = s.block_size;
  report.generators = s.generators();
  const auto butterfly = PeftFamilyAdapter::butterfly<double>(m);
  std::vector<double> orthogonality, rho;
  for (Index i = 0; i < s.factors; ++i)
    for (const double e : butterfly.factor(i).orthogonality_errors()) orthogonality.push_back(e);
  Generators<double> theta(s.generators(), s.block_size);
  peft::boft_generators(m.boft_R.data(), s, theta.view());
  for (Index g = 0; g < theta.count(); ++g)
    rho.push_back(oft::detail::skew_spectral_norm(SquareMatrix<double>(theta.dense(g))));
  report.orthogonality = spread(orthogonality);
  report.rho = spread(rho);
  report.scale_min = *std::min_element(m.boft_s.begin(), m.boft_s.end());
  report.scale_max = *std::max_element(m.boft_s.begin(), m.boft_s.end());
  return report;
}

}  // namespace detail

/// The report on a loaded adapter; `tolerance` (> 0) is the distance to exact Cayley that
/// ModuleReport::terms_for_tolerance is computed for.
inline AdapterReport inspect_adapter(const PeftOftAdapter& adapter, double tolerance) {
  AdapterReport report;
  const auto& config = adapter.config;
  report.peft_version = config.peft_version;
  report.policy = policy_name(config.policy());
  report.num_cayley_neumann_terms = config.num_cayley_neumann_terms;
  if (!config.use_cayley_neumann) {
    report.polynomial = "exact Cayley";
  } else {
    const peft::NeumannBranch branch{config.num_cayley_neumann_terms, config.neumann_form()};
    report.polynomial =
        config.neumann_form() == peft::NeumannForm::Current ? "current" : "legacy (PEFT < 0.18)";
    report.truncation_k = branch.summary({}).terms;
  }
  report.coft = config.coft;
  report.eps = config.eps;
  report.block_share = config.block_share;
  report.tolerance = tolerance;
  for (const auto& m : adapter.modules)
    report.modules.push_back(detail::inspect_module(adapter, m, tolerance));
  return report;
}

/// The report on a loaded BOFT or HRA adapter (see the file comment); `tolerance` is only
/// recorded (no Neumann series is involved).
inline AdapterReport inspect_adapter(const PeftFamilyAdapter& adapter, double tolerance) {
  AdapterReport report;
  report.family = peft_type_name(adapter.family());
  report.peft_version = adapter.config.peft_version;
  report.policy = "cayley";
  report.polynomial = adapter.family() == PeftFamily::Boft ? "exact Cayley" : "Householder";
  report.tolerance = tolerance;
  for (const auto& m : adapter.modules) report.modules.push_back(detail::inspect_family_module(adapter, m));
  return report;
}

/// The report on the adapter directory `adapter_dir` (adapter_config.json and
/// adapter_model.safetensors): OFT, or BOFT/HRA by its peft_type. Throws what
/// PeftOftAdapter::load or PeftFamilyAdapter::load throws.
inline AdapterReport inspect_adapter(const std::string& adapter_dir, double tolerance) {
  if (is_peft_family_type(peft_type_of(adapter_dir)))
    return inspect_adapter(PeftFamilyAdapter::load(adapter_dir), tolerance);
  return inspect_adapter(PeftOftAdapter::load(adapter_dir), tolerance);
}

/// The report as JSON, the schema of `oft inspect --json` and of Python's oft.inspect_adapter
/// (one spelling of the field names for both faces).
inline nlohmann::ordered_json to_json(const AdapterReport& report) {
  const auto spread = [](const Spread& s) {
    return nlohmann::ordered_json{{"worst", s.worst}, {"median", s.median}};
  };
  nlohmann::ordered_json out;
  if (report.family != "OFT") {  // BOFT or HRA: their own fields (an OFT report is unchanged)
    const bool boft = report.family == "BOFT";
    out["family"] = report.family;
    out["peft_version"] = report.peft_version;
    out["modules"] = nlohmann::ordered_json::array();
    for (const auto& m : report.modules) {
      nlohmann::ordered_json j{{"name", m.name}, {"kind", m.kind}, {"features", m.features}};
      if (boft) {
        j["out_features"] = m.out_features;
        j["factors"] = m.factors;
        j["blocks"] = m.blocks;
        j["block_size"] = m.block_size;
      } else {
        j["reflections"] = m.reflections;
        j["apply_GS"] = m.gram_schmidt;
      }
      j["parameters"] = m.parameters;
      j["stored_bytes"] = m.stored_bytes;
      j["dense_rotation_bytes"] = m.dense_bytes;
      j["orthogonality_error"] = spread(m.orthogonality);
      if (boft) {
        j["rho"] = spread(m.rho);
        j["scale"] = {{"min", m.scale_min}, {"max", m.scale_max}};
      }
      out["modules"].push_back(std::move(j));
    }
    return out;
  }
  out["peft_version"] = report.peft_version;
  out["policy"] = report.policy;
  out["polynomial"] = report.polynomial;
  out["num_cayley_neumann_terms"] = report.num_cayley_neumann_terms;
  out["truncation_k"] = report.truncation_k;
  out["coft"] = report.coft;
  out["eps"] = report.eps;
  out["block_share"] = report.block_share;
  out["tolerance"] = report.tolerance;
  out["served_bytes"] = report.served_bytes();
  out["modules"] = nlohmann::ordered_json::array();
  for (const auto& m : report.modules) {
    out["modules"].push_back({{"name", m.name},
                              {"kind", m.kind},
                              {"generators", m.generators},
                              {"block_size", m.block_size},
                              {"shared", m.shared},
                              {"rho", spread(m.rho)},
                              {"orthogonality_error", spread(m.orthogonality)},
                              {"distance_to_cayley", spread(m.distance)},
                              {"diverges", m.diverges},
                              {"terms_for_tolerance", m.terms_for_tolerance},
                              {"served_bytes", m.served_bytes}});
  }
  return out;
}

}  // namespace oft::io
