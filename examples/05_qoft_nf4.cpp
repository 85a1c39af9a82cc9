// 05_qoft_nf4: QOFT, an OFT layer whose frozen base stays quantized (bitsandbytes NF4, as QLoRA
// stores it; see docs/quant.md).
//
//   1. A random float weight W (n_out x d) is quantized to NF4 in blocks of 64 values with one
//      float absmax each (oft::quant::quantize_bnb4, bit for bit what bitsandbytes computes).
//   2. oft::quant::QoftLinear over the NF4 base: forward Z = (X R) Dequant(Wq)^T + bias and
//      backward (dX, dtheta) run the fused dequantize-GEMMs, which dequantize one panel at a time
//      into the workspace and never form the float weight.
//   3. The check: an OftLinear over the dequantized float weight computes the same Z, dX and
//      dtheta (to float rounding). The error of NF4 itself (Dequant(Wq) against W) is printed
//      for scale, with the memory the frozen side takes.
//
// Exits non-zero if QOFT and the float layer over Dequant(Wq) disagree.

#include <oft/oft.hpp>
#include <oft/quant.hpp>

#include <cstdio>
#include <random>
#include <vector>

int main() {
  using RowsF = oft::RowMatrix<float>;
  namespace q = oft::quant;
  const oft::Index n_out = 256, d = 512, b = 32, N = 64;

  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  RowsF w(n_out, d), x(N, d), dz(N, n_out);
  std::vector<float> bias(static_cast<size_t>(n_out));
  for (oft::Index i = 0; i < w.size(); ++i) w.data()[i] = 0.05f * normal(rng);
  for (oft::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  for (oft::Index i = 0; i < dz.size(); ++i) dz.data()[i] = normal(rng);
  for (float& v : bias) v = 0.1f * normal(rng);

  // ---- 1. quantize the frozen weight --------------------------------------------------------
  q::Bnb4Base base(q::quantize_bnb4(w.data(), w.size(), /*blocksize=*/64, q::Bnb4Type::NF4), n_out,
                   d);
  const std::vector<float> dequantized = q::dequantize_all(base);
  const RowsF w_nf4 = Eigen::Map<const RowsF>(dequantized.data(), n_out, d);
  std::printf("NF4 base %td x %td: %zu bytes (float: %zu), |Dequant(Wq) - W| / |W| = %.3f\n",
              n_out, d, base.bytes(), static_cast<size_t>(w.size()) * sizeof(float),
              double((w_nf4 - w).norm() / w.norm()));

  // ---- 2. the QOFT layer and its float twin over Dequant(Wq) ---------------------------------
  // Generators as after some training steps (theta = 0 would make R = I).
  oft::Generators<float> theta(d / b, b);
  for (oft::Index i = 0; i < theta.values().size(); ++i) theta.values().data()[i] = 0.05f * normal(rng);

  q::QoftLinear<float, oft::CayleyNeumann, q::Bnb4Base> qoft(base, bias.data(), b);
  oft::OftLinear<float, oft::CayleyNeumann> dense(oft::view(w_nf4), bias.data(), b);
  qoft.set_generators(theta);
  dense.set_generators(theta);

  oft::Workspace<float> workspace;
  RowsF z_q(N, n_out), z_f(N, n_out), dx_q(N, d), dx_f(N, d);
  oft::Generators<float> dtheta_q(d / b, b), dtheta_f(d / b, b);
  qoft.forward(oft::view(x), oft::view(z_q), workspace);
  qoft.backward(oft::view(x), oft::view(dz), oft::view(dx_q), dtheta_q.view(), workspace);
  dense.forward(oft::view(x), oft::view(z_f), workspace);
  dense.backward(oft::view(x), oft::view(dz), oft::view(dx_f), dtheta_f.view(), workspace);

  // ---- 3. the check ---------------------------------------------------------------------------
  const auto rel = [](const auto& a, const auto& ref) { return double((a - ref).norm() / ref.norm()); };
  const double e_z = rel(z_q, z_f), e_dx = rel(dx_q, dx_f),
               e_dtheta = rel(dtheta_q.values(), dtheta_f.values());
  const double tolerance = 1e-5;  // float32, different summation order (panels vs one GEMM)
  std::printf("QOFT (b = %td, Cayley-Neumann) against OftLinear over Dequant(Wq), N = %td:\n", b, N);
  std::printf("  forward Z       %.1e\n  backward dX     %.1e\n  backward dtheta %.1e\n", e_z, e_dx,
              e_dtheta);
  // For scale: what NF4 costs, Z of the float layer over the original W against QOFT's.
  oft::OftLinear<float, oft::CayleyNeumann> original(oft::view(w), bias.data(), b);
  original.set_generators(theta);
  RowsF z_w(N, n_out);
  original.forward(oft::view(x), oft::view(z_w), workspace);
  std::printf("  (Z against the float layer over the unquantized W: %.3f, the NF4 rounding)\n",
              rel(z_q, z_w));
  std::printf("  frozen side: QOFT keeps %zu bytes, OftLinear %zu\n", qoft.frozen_bytes(),
              static_cast<size_t>(n_out * (d + 1)) * sizeof(float));
  const bool ok = e_z < tolerance && e_dx < tolerance && e_dtheta < tolerance;
  std::printf("%s\n", ok ? "QOFT over NF4 equals the float layer over the dequantized weight"
                         : "MISMATCH");
  return ok ? 0 : 1;
}
