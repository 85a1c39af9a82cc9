/// \file quant_merge_error.cpp
/// Merge-and-requantize error of QOFT against QLoRA over the linear layers of a real model.
///
///   quant_merge_error MODEL.safetensors [rho] [lora_rank]
///
/// For every 2-D weight whose name ends in ".weight" and whose input width is a multiple of
/// b = 32 (the attention and MLP projections of a transformer; embeddings and norms excluded), in
/// NF4 (blocksize 64) and LLM.int8:
///   - QOFT: a random rotation (Cayley-Neumann k = 3, every block's generator at spectral norm
///     rho, default 0.05) merged as W' = W R^T;
///   - QLoRA: a random rank-r (default 16) update s B A, scaled so that ||W' - W||_F equals the
///     rotation's, i.e. the same amount of change, merged as W' = W + s B A;
/// each requantized in the base's format. Reported per format, over all layers: the error the
/// requantization adds to the float merge (max and RMS), the change of each layer's max |w|
/// (the range its scales must cover), and the mean |requantized - float merge| relative to the
/// change itself. Seeds are fixed: the table is reproducible.
#include <oft/cayley_neumann.hpp>
#include <oft/io/safetensors.hpp>
#include <oft/quant/merge.hpp>

#include <cmath>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

namespace {

using oft::Index;
using oft::quant::Bnb4Base;
using oft::quant::Bnb4Type;
using oft::quant::Int8Base;
using oft::quant::MergeReport;

constexpr Index kBlock = 32;

struct Totals {
  Index layers = 0, values = 0;
  double max_error = 0, sum_sq_error = 0, max_range_shift = 0, sum_change = 0;
  void add(const MergeReport& r) {
    ++layers;
    values += r.values;
    max_error = std::max(max_error, r.max_error);
    sum_sq_error += r.rms_error * r.rms_error * double(r.values);
    max_range_shift = std::max(max_range_shift, std::fabs(r.merged_absmax - r.base_absmax) / r.base_absmax);
    sum_change += r.rms_change * r.rms_change * double(r.values);
  }
  double rms_error() const { return std::sqrt(sum_sq_error / double(values)); }
  double rms_change() const { return std::sqrt(sum_change / double(values)); }
};

oft::Generators<float> random_generators(Index count, double rho, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  oft::Generators<float> theta(count, kBlock);
  for (Index g = 0; g < count; ++g) {
    oft::Generators<double> one(1, kBlock);
    for (Index j = 0; j < one.packed(); ++j) one.values()(0, j) = normal(rng);
    const Eigen::MatrixXd q = one.dense(0);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(q.transpose() * q, Eigen::EigenvaluesOnly);
    const double norm = std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
    for (Index j = 0; j < one.packed(); ++j) theta.values()(g, j) = static_cast<float>(one.values()(0, j) * rho / norm);
  }
  return theta;
}

template <class Base>
void compare(const Base& base, double rho, Index rank, std::mt19937_64& rng, Totals& qoft, Totals& qlora) {
  const Index d = base.cols(), n_out = base.rows();
  oft::BlockOrthogonal<float, oft::CayleyNeumann> rotation(oft::BlockSpec::from_features(d, kBlock),
                                                           oft::CayleyNeumann{3});
  rotation.set_generators(random_generators(d / kBlock, rho, rng).view());
  MergeReport r;
  (void)oft::quant::merge_rotation(base, rotation, &r);
  qoft.add(r);
  // LoRA with the same Frobenius change: ||s B A||_F = rms_change * sqrt(n_out d).
  std::normal_distribution<float> normal;
  oft::RowMatrix<float> a(rank, d), b(n_out, rank);
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = normal(rng);
  for (Index i = 0; i < b.size(); ++i) b.data()[i] = normal(rng);
  const double target = r.rms_change * std::sqrt(double(n_out) * double(d));
  const float scaling = static_cast<float>(target / (b * a).norm());
  MergeReport l;
  (void)oft::quant::merge_lora(base, a, b, scaling, &l);
  qlora.add(l);
}

void print_row(const char* method, const char* format, const Totals& t) {
  std::printf("| %s | %s | %lld | %.3e | %.3e | %.3e | %.2f%% | %.3f |\n", method, format,
              static_cast<long long>(t.layers), t.rms_change(), t.max_error, t.rms_error(),
              100.0 * t.max_range_shift, t.rms_error() / t.rms_change());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: quant_merge_error MODEL.safetensors [rho] [lora_rank]\n");
    return 2;
  }
  try {
    const double rho = argc > 2 ? std::stod(argv[2]) : 0.05;
    const Index rank = argc > 3 ? std::stol(argv[3]) : 16;
    const auto file = oft::io::SafetensorsFile::open(argv[1]);
    std::mt19937_64 rng(20261126);
    Totals qoft_nf4, qlora_nf4, qoft_int8, qlora_int8;
    for (const std::string& name : file.tensor_names()) {
      const auto tensor = file.tensor(name);
      if (tensor.shape.size() != 2 || name.size() < 7 || name.compare(name.size() - 7, 7, ".weight") != 0) continue;
      const Index n_out = static_cast<Index>(tensor.shape[0]), d = static_cast<Index>(tensor.shape[1]);
      if (d % kBlock != 0 || name.find("embeddings") != std::string::npos) continue;
      const std::vector<float> w = tensor.to_floats();
      compare(Bnb4Base(oft::quant::quantize_bnb4(w.data(), n_out * d, 64, Bnb4Type::NF4), n_out, d), rho, rank, rng,
              qoft_nf4, qlora_nf4);
      compare(Int8Base(oft::quant::quantize_int8(w.data(), n_out, d)), rho, rank, rng, qoft_int8, qlora_int8);
    }
    std::printf("%s: rho = %g, b = %lld, LoRA rank %lld at the rotation's Frobenius change\n\n", argv[1], rho,
                static_cast<long long>(kBlock), static_cast<long long>(rank));
    std::printf("| merge | base | layers | RMS change (float merge - base) | max requant error | RMS requant "
                "error | max range shift (max abs w) | RMS error / RMS change |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    print_row("QOFT (W R^T)", "NF4 bs64", qoft_nf4);
    print_row("QLoRA (W + sBA)", "NF4 bs64", qlora_nf4);
    print_row("QOFT (W R^T)", "int8", qoft_int8);
    print_row("QLoRA (W + sBA)", "int8", qlora_int8);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quant_merge_error: %s\n", e.what());
    return 1;
  }
  return 0;
}
