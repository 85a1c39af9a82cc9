// 03_peft_interop: using an adapter trained with Hugging Face PEFT's OFT.
//
// PEFT saves one tensor per adapted module, `<module>.oft_R.weight`, of shape [r, b(b-1)/2]
// (fp32, [1, ...] with block_share), in oft's packed order, plus adapter_config.json. Loading it:
//
//   - b from the row length (peft::block_size_from_row_length), r = rows, d = r * b;
//   - use_cayley_neumann=True, num_cayley_neumann_terms=t  ->  CayleyNeumann{k},
//     k = peft::neumann_terms_to_k(t) (k = t - 2; t = 3 computes the same as t = 4; t <= 2
//     refused there; peft::NeumannBranch{t} reproduces every t, and the pre-0.18 form);
//   - use_cayley_neumann=False  ->  ExactCayley on NEGATED theta (peft::flip_exact_branch), since
//     PEFT's exact branch computes (I - Q)(I + Q)^-1 = R(-Q);
//   - merge like PEFT's Linear: W' = W0 R^T; unmerge is the true inverse;
//   - coft=True: project after each step (peft::coft_project with PEFT's float32 radius
//     peft::coft_radius(eps, r); coft_project / coft_radius are the SPEC's double versions);
//   - module_dropout=p: floor(p r) blocks act as the identity per step (dropout_mask).
//
// The tensor is simulated in memory; PEFT's formulas are re-implemented below in double as the
// reference. Exits non-zero on any mismatch.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <oft/oft.hpp>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

using MatrixD = Eigen::MatrixXd;
using RowsF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowsD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int failures = 0;
void check(bool ok, const char* what) {
  std::printf("    %-64s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

double relative_error(const RowsD& a, const RowsD& b) { return (a - b).norm() / b.norm(); }

// PEFT's rotation for one block, as its OFT layer computes it (re-implemented in double).
// Neumann branch with t terms: I + 2Q + 2Q^2 (+ 2Q^3 ... + 2Q^(t-2)) + Q^(t-1), where t = 3 and
// t = 4 both stop at Q^3; exact branch: (I - Q)(I + Q)^-1.
MatrixD peft_rotation(const MatrixD& q, bool use_cayley_neumann, int t) {
  const MatrixD I = MatrixD::Identity(q.rows(), q.cols());
  if (!use_cayley_neumann) return (I - q) * (I + q).inverse();
  MatrixD r = I;
  if (t > 1) {
    r += 2 * q;
    if (t > 2) {
      MatrixD power = q * q;
      r += 2 * power;
      for (int j = 3; j < t - 1; ++j) {
        power = power * q;
        r += 2 * power;
      }
      r += power * q;
    }
  }
  return r;
}

// Dense block-diagonal PEFT rotation from a [rows, m] tensor (rows = 1 with block_share).
RowsD peft_dense(const std::vector<float>& tensor, oft::Index rows, oft::Index blocks, oft::Index b,
                 bool use_cayley_neumann, int t) {
  RowsD dense = RowsD::Zero(blocks * b, blocks * b);
  std::vector<double> row(static_cast<size_t>(oft::packed_size(b)));
  for (oft::Index i = 0; i < blocks; ++i) {
    const float* src = tensor.data() + (rows == 1 ? 0 : i) * oft::packed_size(b);
    for (size_t k = 0; k < row.size(); ++k) row[k] = src[k];
    dense.block(i * b, i * b, b, b) =
        peft_rotation(oft::skew(row.data(), b).eval(), use_cayley_neumann, t);
  }
  return dense;
}

}  // namespace

int main() {
  // adapter_config.json: {"oft_block_size": 32, "use_cayley_neumann": true,
  //                       "num_cayley_neumann_terms": 5, "block_share": false, ...}
  const oft::Index d = 256, n_out = 128, N = 16;
  const int t = 5;

  // The saved oft_R.weight: [8, 496] fp32. Trained adapters have small generators.
  const oft::Index rows = 8, cols = 496;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> oft_R(static_cast<size_t>(rows * cols));
  for (float& v : oft_R) v = 0.01f * normal(rng);

  // The frozen base layer and a batch (stand-ins for the model's weights and activations).
  RowsF w0(n_out, d), x(N, d);
  Eigen::Matrix<float, 1, Eigen::Dynamic> bias(n_out);
  for (oft::Index i = 0; i < w0.size(); ++i) w0.data()[i] = normal(rng) / 16.0f;
  for (oft::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  for (oft::Index i = 0; i < bias.size(); ++i) bias(i) = 0.1f * normal(rng);

  std::printf("oft <-> PEFT: oft_R.weight [%td, %td] fp32, layer %td -> %td\n\n", rows, cols, d,
              n_out);

  // ---- 1. shapes and the number of terms --------------------------------------------------
  const oft::Index b = oft::peft::block_size_from_row_length(cols);
  const int k = oft::peft::neumann_terms_to_k(t);
  std::printf(
      "  load: b = %td from the row length, r = %td rows, num_cayley_neumann_terms %d -> k = %d\n",
      b, rows, t, k);
  check(b == 32 && rows * b == d, "b = 32 from 496 = b(b-1)/2, and r * b = in_features");
  bool rejected = false;
  try {
    oft::peft::block_size_from_row_length(495);
  } catch (const std::invalid_argument&) {
    rejected = true;
  }
  check(rejected, "a row length that is no b(b-1)/2 is refused");

  std::printf("\n  PEFT t -> oft k, max |R_peft(t) - R_k| on block 0:\n");
  std::vector<double> row0(oft_R.begin(), oft_R.begin() + cols);
  const MatrixD q0 = 10.0 * oft::skew(row0.data(), b).eval();  // rho ~ 0.5: terms matter
  bool mapping_ok = true;
  for (int terms = 1; terms <= 7; ++terms) {
    try {
      const int kk = oft::peft::neumann_terms_to_k(terms);
      const double diff = (peft_rotation(q0, true, terms) - oft::cayley_neumann(q0, kk).eval())
                              .cwiseAbs()
                              .maxCoeff();
      std::printf("    t = %d  ->  k = %d   %.1e\n", terms, kk, diff);
      mapping_ok = mapping_ok && diff < 1e-14;
    } catch (const std::domain_error& e) {
      std::printf("    t = %d  ->  refused: %s\n", terms, e.what());
      mapping_ok = mapping_ok && terms <= 2;
    }
  }
  check(mapping_ok, "R_k equals PEFT's series for every t >= 3; t <= 2 refused");

  // ---- 2. the layer: forward as PEFT computes it ------------------------------------------
  // GeneratorView over the tensor as it is: [rows, cols], b deduced from cols.
  const oft::GeneratorView<const float> theta(
      oft::ConstMatrixView<float>(oft_R.data(), rows, cols));
  oft::OftLinear<float, oft::CayleyNeumann> layer(oft::view(w0), bias.data(), b, false,
                                                  oft::CayleyNeumann{k});
  layer.set_generators(theta);
  oft::Workspace<float> workspace;
  RowsF z(N, n_out);
  layer.forward(oft::view(x), oft::view(z), workspace);

  // PEFT: x_rotated = einsum("...rk,rkc->...rc", x.reshape(..., r, b), R), then the base layer.
  const RowsD R_peft = peft_dense(oft_R, rows, rows, b, true, t);
  const RowsD xd = x.cast<double>(), w0d = w0.cast<double>();
  const RowsD z_peft = (xd * R_peft * w0d.transpose()).rowwise() + bias.cast<double>();
  std::printf("\n  forward, Neumann branch (k = %d):\n", k);
  check(relative_error(z.cast<double>(), z_peft) < 1e-5, "Z = einsum(x, R) W0^T + bias, as PEFT");

  // ---- 3. merge / unmerge like PEFT's Linear ------------------------------------------------
  const RowsF merged = layer.merged();  // W' = W0 R^T
  const RowsF z_merged = (x * merged.transpose()).rowwise() + bias;
  const RowsF unmerged = layer.unmerge(oft::view(merged));
  const RowsF shortcut = merged * layer.rotation().dense();  // W' R: exact only if R^T R = I
  std::printf("\n  merge W' = W0 R^T, unmerge W0 = W' (R^T)^-1:\n");
  check(relative_error(merged.cast<double>(), w0d * R_peft.transpose()) < 1e-5,
        "W' = W0 R^T (PEFT's merge)");
  check(relative_error(z_merged.cast<double>(), z.cast<double>()) < 1e-5,
        "a plain linear layer with W' gives the same Z");
  std::printf("    unmerge error %.1e; W' R instead would be off by %.1e (R_3 is not orthogonal)\n",
              relative_error(unmerged.cast<double>(), w0d),
              relative_error(shortcut.cast<double>(), w0d));
  check(relative_error(unmerged.cast<double>(), w0d) < 1e-5, "unmerge recovers W0 (true inverse)");

  // ---- 4. an adapter trained with PEFT's exact branch --------------------------------------
  std::vector<float> oft_R_exact = oft_R;  // use_cayley_neumann=False
  oft::peft::flip_exact_branch(
      oft::GeneratorView<float>(oft::MatrixView<float>(oft_R_exact.data(), rows, cols)));
  oft::OftLinear<float, oft::ExactCayley> exact(oft::view(w0), bias.data(), b);
  exact.set_generators(oft::GeneratorView<const float>(oft_R_exact.data(), rows, b));
  exact.forward(oft::view(x), oft::view(z), workspace);
  const RowsD z_peft_exact =
      (xd * peft_dense(oft_R, rows, rows, b, false, t) * w0d.transpose()).rowwise() +
      bias.cast<double>();
  std::printf("\n  exact branch (PEFT computes (I - Q)(I + Q)^-1 = R(-Q)):\n");
  check(relative_error(z.cast<double>(), z_peft_exact) < 1e-5,
        "ExactCayley on negated theta reproduces PEFT's exact branch");
  check(exact.rotation().orthogonality_error() < 1e-5, "and R is orthogonal to float precision");

  // ---- 5. block_share: one [1, m] generator for all r blocks -------------------------------
  oft::OftLinear<float, oft::CayleyNeumann> shared(oft::view(w0), bias.data(), b, /*shared=*/true,
                                                   oft::CayleyNeumann{k});
  shared.set_generators(oft::GeneratorView<const float>(oft_R.data(), 1, b));  // first row only
  shared.forward(oft::view(x), oft::view(z), workspace);
  const RowsD z_shared = (xd * peft_dense(oft_R, 1, rows, b, true, t) * w0d.transpose()).rowwise() +
                         bias.cast<double>();
  std::printf("\n  block_share (oft_R.weight [1, %td]):\n", cols);
  check(relative_error(z.cast<double>(), z_shared) < 1e-5, "every block uses the one R");

  // ---- 6. COFT: project after each optimizer step --------------------------------------------
  // coft=True, eps: PEFT keeps ||Q_i||_F <= eps / sqrt(r) by projecting theta after each step.
  const double eps = 1.0, radius = oft::coft_radius(eps, rows);
  std::vector<float> stepped = oft_R;
  for (oft::Index g = 0; g < rows; ++g)  // a large step on half of the generators
    if (g % 2 == 1)
      for (oft::Index j = 0; j < cols; ++j) stepped[size_t(g * cols + j)] *= 5.0f;
  const std::vector<float> before = stepped;
  const oft::Index scaled =
      oft::coft_project(oft::GeneratorView<float>(stepped.data(), rows, b), radius);
  bool coft_ok = true;
  for (oft::Index g = 0; g < rows; ++g) {
    double norm_before = 0.0;
    for (oft::Index j = 0; j < cols; ++j)
      norm_before += 2.0 * double(before[size_t(g * cols + j)]) * before[size_t(g * cols + j)];
    norm_before = std::sqrt(norm_before);  // ||Q||_F = sqrt(2) ||row||
    const double expected = norm_before > radius ? radius / norm_before : 1.0;
    for (oft::Index j = 0; j < cols; ++j)
      coft_ok = coft_ok && std::abs(stepped[size_t(g * cols + j)] -
                                    expected * before[size_t(g * cols + j)]) <= 1e-6;
  }
  std::printf("\n  COFT, eps = %.1f: radius eps/sqrt(r) = %.3f, %td of %td generators projected\n",
              eps, radius, scaled, rows);
  check(coft_ok, "Q <- radius * Q / ||Q||_F outside the ball, unchanged inside");

  // ---- 7. module_dropout: whole blocks act as the identity during training ---------------
  const double p = 0.25;
  const oft::BlockSpec spec = layer.rotation().spec();
  const std::vector<unsigned char> mask = oft::dropout_mask(spec, p, /*seed=*/1000 + 7);
  std::printf("\n  module_dropout p = %.2f: floor(p r) = %td of %td blocks dropped this step:  ", p,
              static_cast<oft::Index>(p * double(rows)), rows);
  oft::Index dropped = 0;
  for (unsigned char keep : mask) {
    std::printf("%c", keep ? '1' : '0');
    dropped += keep ? 0 : 1;
  }
  std::printf("\n");
  layer.rotation().set_active_blocks(mask);
  RowsF y(N, d);
  layer.rotation().apply(oft::view(x), oft::view(y));
  bool dropout_ok = dropped == 2;
  for (oft::Index i = 0; i < rows; ++i) {
    const bool identity = y.middleCols(i * b, b) == x.middleCols(i * b, b);
    dropout_ok = dropout_ok && (identity == !mask[size_t(i)]);
  }
  check(dropout_ok, "dropped blocks pass X through, the others rotate it");
  check(oft::dropout_mask(spec, p, 1007) == mask && oft::dropout_mask(spec, p, 1008) != mask,
        "reproducible: same seed, same mask (SplitMix64 + Fisher-Yates)");
  const std::vector<unsigned char> shared_mask =
      oft::dropout_mask(shared.rotation().spec(), p, 1007);
  check(std::find(shared_mask.begin(), shared_mask.end(), 0) == shared_mask.end(),
        "block_share: nothing is dropped (as in PEFT)");
  layer.rotation().set_active_blocks({});  // evaluation / merging: all blocks active again

  // ---- 8. Embedding: PEFT rotates the output side, E' = E R ----------------------------------
  RowsF table(50, d);  // vocabulary x d
  for (oft::Index i = 0; i < table.size(); ++i) table.data()[i] = normal(rng);
  const RowsD table_d = table.cast<double>();
  layer.rotation().apply(oft::view(table), oft::view(table));  // in place, row by row
  std::printf("\n  Embedding:\n");
  check(relative_error(table.cast<double>(), table_d * R_peft) < 1e-5,
        "E' = E R (each embedding row times R)");

  std::printf("\n%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
