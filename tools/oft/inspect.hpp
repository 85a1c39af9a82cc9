#pragma once
/// \file tools/oft/inspect.hpp
/// What `oft inspect ADAPTER` reports, computed apart from the printing so tests can check it.
/// Every number is in double, from the generators as PEFT uses them (COFT-projected when on).

#include <oft/io/peft_adapter.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include <Eigen/Eigenvalues>

namespace oft_cli {

using oft::Index;

/// Worst and median of a list (both 0 for an empty list).
struct Spread {
  double worst = 0.0;
  double median = 0.0;
};

inline Spread spread(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  const double median = n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
  return {values.back(), median};
}

/// One adapted module.
struct ModuleReport {
  std::string name;
  std::string kind;        ///< "linear" or "embedding"
  Index generators = 0;    ///< rows of theta
  Index block_size = 0;
  bool shared = false;
  Spread rho;              ///< ||Q_g||_2 over generators
  Spread orthogonality;    ///< ||R_g^T R_g - I||_2 over generators, R under the adapter's policy
  Spread distance;         ///< ||R_g - Cayley(Q_g)||_2 over generators
  bool diverges = false;   ///< some rho >= 1: a Cayley–Neumann series diverges there
  int terms_for_tolerance = -1;  ///< smallest k with rho^(k+1) <= tol for the worst rho; -1: none
};

/// The whole adapter.
struct AdapterReport {
  std::string peft_version;  ///< "" when absent
  std::string polynomial;    ///< "current" or "legacy (PEFT < 0.18)", or "exact Cayley"
  std::string policy;        ///< policy name
  int num_cayley_neumann_terms = 0;
  int truncation_k = -1;     ///< k of R_k when PEFT's polynomial is a truncation, else -1
  bool coft = false;
  double eps = 0.0;
  bool block_share = false;
  double tolerance = 0.0;
  std::vector<ModuleReport> modules;
};

inline double spectral_norm(const oft::RowMatrix<double>& m) {
  const Eigen::MatrixXd gram = m.transpose() * m;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram, Eigen::EigenvaluesOnly);
  return std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
}

inline ModuleReport inspect_module(const oft::io::PeftOftAdapter& adapter,
                                   const oft::io::PeftOftModule& m, double tolerance) {
  ModuleReport report;
  report.name = m.name;
  report.kind = m.kind == oft::io::PeftModuleKind::Linear ? "linear" : "embedding";
  report.generators = m.theta.count();
  report.block_size = m.spec.block_size;
  report.shared = m.spec.shared;

  const oft::Generators<float> effective = adapter.effective_generators(m);
  oft::Generators<double> theta(effective.count(), effective.block_size());
  theta.values() = effective.values().cast<double>();
  const oft::BlockSpec spec{theta.count(), theta.block_size(), false};  // one block per generator
  oft::AnyBlockOrthogonal<double> rotation(spec, adapter.config.policy());
  oft::BlockOrthogonal<double, oft::ExactCayley> cayley(spec);
  rotation.set_generators(theta);
  cayley.set_generators(theta);

  std::vector<double> rho, orthogonality = rotation.orthogonality_errors(), distance;
  for (Index g = 0; g < theta.count(); ++g) {
    rho.push_back(oft::detail::skew_spectral_norm(oft::SquareMatrix<double>(theta.dense(g))));
    distance.push_back(spectral_norm(rotation.block(g) - cayley.block(g)));
  }
  report.rho = spread(rho);
  report.orthogonality = spread(orthogonality);
  report.distance = spread(distance);
  report.diverges = report.rho.worst >= 1.0;
  report.terms_for_tolerance =
      oft::neumann_terms_for_distance(report.rho.worst, tolerance, 1, oft::kMaxNeumannTerms);
  return report;
}

inline AdapterReport inspect(const oft::io::PeftOftAdapter& adapter, double tolerance) {
  AdapterReport report;
  const auto& config = adapter.config;
  report.peft_version = config.peft_version;
  report.policy = oft::policy_name(config.policy());
  report.num_cayley_neumann_terms = config.num_cayley_neumann_terms;
  if (!config.use_cayley_neumann) {
    report.polynomial = "exact Cayley";
  } else {
    const oft::peft::NeumannBranch branch{config.num_cayley_neumann_terms, config.neumann_form()};
    report.polynomial = config.neumann_form() == oft::peft::NeumannForm::Current
                            ? "current"
                            : "legacy (PEFT < 0.18)";
    report.truncation_k = branch.summary({}).terms;
  }
  report.coft = config.coft;
  report.eps = config.eps;
  report.block_share = config.block_share;
  report.tolerance = tolerance;
  for (const auto& m : adapter.modules) report.modules.push_back(inspect_module(adapter, m, tolerance));
  return report;
}

}  // namespace oft_cli
