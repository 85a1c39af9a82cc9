// 00_quickstart: orthogonal finetuning (OFT) of a frozen linear layer on the CPU, end to end.
//
// A frozen random layer Z = X W0^T + bias gets a block-diagonal orthogonal adapter R(theta):
// Z = (X R) W0^T + bias. A hidden "teacher" rotation R* = R(theta*) defines the targets
// Z* = X R* W0^T + bias; we train theta from zero with Adam on the input-centric path
// (OftLinear::forward / backward, OFTv2), print the loss as it falls, the final orthogonality
// error, and the time per step of the input-centric path against the weight-centric one
// (original OFT: W' = W0 R^T, then X W'^T).
//
//   bash scripts/demo.sh            (or: cmake --build <build> --target demo)
//
// This example is also a test: it exits non-zero unless the loss fell by at least 1e4 and the
// two paths agree. Set OFT_EXAMPLE_QUICK=1 (or pass --quick) for a smaller, faster run.

// oft first: its headers include <immintrin.h> with GCC 12's false -Wmaybe-uninitialized off
// (include/oft/detail/intrinsics.hpp); Eigen included earlier would bring it in without that.
#include <oft/oft.hpp>

#include <Eigen/SVD>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>


namespace {

using Scalar = float;
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;

// The parameterization of both the teacher and the student. Cayley-Neumann with k = 4 terms is
// OFTv2's inverse-free map, R_4(Q) = I + 2Q + 2Q^2 + 2Q^3 + 2Q^4 + Q^5. The targets are made with
// the very same map, so the optimum is reachable exactly (loss 0 at theta = theta*): the
// demo measures the optimizer and the gradients, not the gap between R_4 and exact Cayley.
// k = 4 (even) is also the more orthogonal parity: ||R_4^T R_4 - I||_2 = rho^10.
using Policy = oft::CayleyNeumann;
using Layer = oft::OftLinear<Scalar, Policy>;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

Matrix gaussian(oft::Index rows, oft::Index cols, double sigma, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, sigma);
  Matrix m(rows, cols);
  for (oft::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(normal(rng));
  return m;
}

// Adam (Kingma & Ba 2015) on a flat parameter array, with bias correction.
class Adam {
 public:
  explicit Adam(oft::Index size, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-12)
      : m_(static_cast<size_t>(size), 0.0),
        v_(static_cast<size_t>(size), 0.0),
        beta1_(beta1),
        beta2_(beta2),
        eps_(eps) {}

  void step(Scalar* params, const Scalar* grad, double lr) {
    ++t_;
    const double c1 = 1.0 - std::pow(beta1_, t_), c2 = 1.0 - std::pow(beta2_, t_);
    for (size_t i = 0; i < m_.size(); ++i) {
      const double g = grad[i];
      m_[i] = beta1_ * m_[i] + (1.0 - beta1_) * g;
      v_[i] = beta2_ * v_[i] + (1.0 - beta2_) * g * g;
      params[i] -= static_cast<Scalar>(lr * (m_[i] / c1) / (std::sqrt(v_[i] / c2) + eps_));
    }
  }

 private:
  std::vector<double> m_, v_;
  double beta1_, beta2_, eps_;
  int t_ = 0;
};

// MSE loss L = mean((Z - Z*)^2) and its gradient dZ = 2 (Z - Z*) / (N n_out).
double mse(const Matrix& z, const Matrix& target, Matrix& dz) {
  dz = z - target;
  const double loss = static_cast<double>(dz.squaredNorm()) / static_cast<double>(dz.size());
  dz *= Scalar(2.0 / static_cast<double>(dz.size()));
  return loss;
}

// rho = max_i ||Q_i||_2 over the generators (the largest singular value of each Q_i).
double spectral_radius(const oft::Generators<Scalar>& theta) {
  double rho = 0.0;
  for (oft::Index g = 0; g < theta.count(); ++g)
    rho = std::max(
        rho,
        double(Eigen::JacobiSVD<oft::SquareMatrix<Scalar>>(theta.dense(g)).singularValues()(0)));
  return rho;
}

double median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

double relative_difference(const Matrix& a, const Matrix& b) {
  return static_cast<double>((a - b).norm()) / std::max(1e-30, static_cast<double>(b.norm()));
}

int openmp_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

bool quick_mode(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--quick") == 0) return true;
  const char* env = std::getenv("OFT_EXAMPLE_QUICK");
  return env != nullptr && env[0] != '\0' && std::strcmp(env, "0") != 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = quick_mode(argc, argv);
  const oft::Index d = quick ? 256 : 512;       // input features
  const oft::Index n_out = quick ? 512 : 1024;  // output features
  const oft::Index b = 32;                      // block size
  const oft::Index tokens = quick ? 256 : 512;  // N rows of X
  const int steps = 200;
  const int report_every = 20;
  const int timed_steps = 21;
  const double lr_start = 1e-2, lr_end = 1e-4;
  const double required_drop = 1e4;

  std::mt19937_64 rng(2024);

  // The frozen layer (PyTorch nn.Linear layout, W0: n_out x d) and a batch of tokens.
  const Matrix w0 = gaussian(n_out, d, 1.0 / std::sqrt(double(d)), rng);
  const Vector bias = gaussian(1, n_out, 0.1, rng);
  const Matrix x = gaussian(tokens, d, 1.0, rng);

  // Teacher: a hidden rotation with modest generators (||Q*||_2 well below 1).
  Layer teacher(oft::view(w0), bias.data(), b, /*shared=*/false, Policy{4});
  const oft::BlockSpec spec = teacher.rotation().spec();
  oft::Generators<Scalar> theta_star(spec);
  theta_star.values() = gaussian(spec.generators(), spec.packed(), 0.02, rng);
  teacher.set_generators(theta_star);
  const double rho_star = spectral_radius(theta_star);

  oft::Workspace<Scalar> workspace;  // caller-owned scratch, reused by every call
  Matrix target(tokens, n_out);
  teacher.forward(oft::view(x), oft::view(target), workspace);

  // Student: the same frozen layer, theta = 0 (R = I) to start.
  Layer layer(oft::view(w0), bias.data(), b, /*shared=*/false, Policy{4});
  oft::Generators<Scalar> theta(spec), dtheta(spec);
  Matrix z(tokens, n_out), dz(tokens, n_out);
  Adam adam(theta.values().size());

  std::printf("oft quickstart: orthogonal finetuning of a frozen linear layer on the CPU\n");
  std::printf("  layer    W0 %td x %td (float, + bias), frozen\n", n_out, d);
  std::printf("  adapter  r = %td blocks of b = %td, %td trainable numbers, %s k = 4\n",
              spec.blocks, spec.block_size, theta.values().size(), Policy::name);
  std::printf("  data     N = %td tokens; targets from a hidden rotation, max ||Q*||_2 = %.3f\n",
              tokens, rho_star);
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("  cpu      %d OpenMP thread(s)%s%s, base GEMMs by %s%s\n\n", openmp_threads(),
              wait_policy ? ", OMP_WAIT_POLICY=" : "", wait_policy ? wait_policy : "",
#if defined(EIGEN_USE_BLAS)
              "BLAS",
#else
              "Eigen",
#endif
              quick ? "   [quick mode]" : "");

  std::printf("  step        loss   loss/loss0   time\n");
  double loss0 = 0.0, loss = 0.0;
  const auto train_start = Clock::now();
  for (int step = 0; step <= steps; ++step) {
    layer.set_generators(theta);                           // theta -> R_i
    layer.forward(oft::view(x), oft::view(z), workspace);  // Z = (X R) W0^T + bias
    loss = mse(z, target, dz);
    if (step == 0) loss0 = loss;
    if (step % report_every == 0)
      std::printf("  %4d  %10.3e   %10.3e   %5.2f s\n", step, loss, loss / loss0,
                  seconds_since(train_start));
    if (step == steps) break;
    layer.backward(oft::view(x), oft::view(dz), {}, dtheta, workspace);  // dtheta only
    // Learning rate decays geometrically from lr_start to lr_end.
    const double lr = lr_start * std::pow(lr_end / lr_start, double(step) / steps);
    adam.step(theta.values().data(), dtheta.values().data(), lr);
  }
  const double train_seconds = seconds_since(train_start);
  const double drop = loss0 / loss;
  const bool trained = drop >= required_drop;

  std::printf("\n  loss fell by %.1e in %d steps, %.2f s   (goal >= %.0e: %s)\n", drop, steps,
              train_seconds, required_drop, trained ? "ok" : "FAILED");
  const double rho = spectral_radius(theta);
  std::printf("  orthogonality error max_i ||R_i^T R_i - I||_2 = %.1e",
              layer.rotation().orthogonality_error());
  std::printf("   (rho^10 = %.1e, float eps = %.1e)\n", oft::neumann_orthogonality_bound(rho, 4),
              double(Eigen::NumTraits<Scalar>::epsilon()));
  std::printf("  theta vs hidden theta*: relative error %.1e\n",
              relative_difference(theta.values(), theta_star.values()));

  // Per-step time of both paths on the same data: forward + MSE gradient + backward. Taken at
  // theta = theta*/2, where the gradient is far from zero, so comparing the two paths' gradients
  // means something (at the optimum dZ is rounding noise).
  // Where the difference comes from: both paths share the base GEMM Z = (.) W0^T and dY = dZ W0
  // (2 N d n_out flops each). The input-centric path adds X R and its backward (2 N d b flops
  // each); the weight-centric one merges W' = W0 R^T block by block (2 n_out d b) and needs
  // dW' = dZ^T X, one more full-size GEMM (2 N d n_out). The original OFT formed a dense d x d R
  // and paid O(d^2 n_out) for the merge, far more than this block-wise reference.
  oft::Generators<Scalar> probe(spec);
  probe.values() = Scalar(0.5) * theta_star.values();
  Matrix z_wc(tokens, n_out), dz_wc(tokens, n_out);
  oft::Generators<Scalar> dtheta_wc(spec);
  const auto one_step = [&](bool input_centric) {
    const auto start = Clock::now();
    layer.set_generators(probe);
    if (input_centric) {
      layer.forward(oft::view(x), oft::view(z), workspace);
      mse(z, target, dz);
      layer.backward(oft::view(x), oft::view(dz), {}, dtheta, workspace);
    } else {
      layer.forward_weight_centric(oft::view(x), oft::view(z_wc));
      mse(z_wc, target, dz_wc);
      layer.backward_weight_centric(oft::view(x), oft::view(dz_wc), {}, dtheta_wc);
    }
    return 1e3 * seconds_since(start);
  };
  // Alternate the two paths step by step, so both see the same machine load, and report the
  // median step of each.
  std::vector<double> ms_input_steps, ms_weight_steps;
  one_step(true);  // warm up both paths once (first touch of buffers, thread pools)
  one_step(false);
  for (int i = 0; i < timed_steps; ++i) {
    ms_input_steps.push_back(one_step(true));
    ms_weight_steps.push_back(one_step(false));
  }
  const double ms_input = median(ms_input_steps);
  const double ms_weight = median(ms_weight_steps);
  const double z_diff = relative_difference(z_wc, z);
  const double grad_diff = relative_difference(dtheta_wc.values(), dtheta.values());
  const bool agree = z_diff < 1e-5 && grad_diff < 1e-4;

  std::printf(
      "\n  time per step (set_generators + forward + MSE gradient + backward, median of %d):\n",
      timed_steps);
  std::printf("    input-centric  (OFTv2: Z = (X R) W0^T)   %7.2f ms\n", ms_input);
  std::printf("    weight-centric (OFT:   Z = X (W0 R^T)^T) %7.2f ms   (%.2fx the input-centric)\n",
              ms_weight, ms_weight / ms_input);
  std::printf("    both paths agree: Z rel. diff %.1e, dtheta rel. diff %.1e   (%s)\n", z_diff,
              grad_diff, agree ? "ok" : "FAILED");

  return trained && agree ? EXIT_SUCCESS : EXIT_FAILURE;
}
