/// Steady-state calls of the CPU hot paths allocate nothing: a counting malloc (this
/// executable only) counts heap allocations made between two marks, Eigen's included.
///
/// - one whole training step of BlockOrthogonal: set_generators, apply (also in place),
///   apply_transposed, and backward with and without dtheta, with 1 and 2 threads, for every
///   policy but the exponential: no allocation at all once the OpenMP team and each thread's
///   b x b scratch (detail/thread_scratch.hpp) exist. With LLVM's libomp, which allocates to
///   enter a parallel region, the count must instead be the same at two problem sizes;
/// - the matrix exponential allocates inside Eigen's exp(), per generator, never per token.

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>

#include <gtest/gtest.h>

#include "oft/oft.hpp"
#include "../test_support.hpp"

namespace {
std::atomic<long> g_allocations{0};
}

// The counter sits at malloc, not at operator new: Eigen allocates its matrices with malloc
// (aligned_malloc), and operator new calls malloc too, so this sees both.
#if defined(__SANITIZE_ADDRESS__)
#define OFT_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OFT_TEST_ASAN 1
#endif
#endif

#if defined(OFT_TEST_ASAN)
// Under AddressSanitizer, which owns malloc, its allocation hook counts.
#include <sanitizer/allocator_interface.h>
namespace {
void count_allocation(const volatile void*, std::size_t) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
}
void ignore_free(const volatile void*) {}
[[maybe_unused]] const int g_hooks_installed =
    __sanitizer_install_malloc_and_free_hooks(count_allocation, ignore_free);
}  // namespace
#elif defined(__GLIBC__)
// glibc: this program's malloc family replaces libc's (glibc supports replacing malloc, calloc,
// realloc and free) and forwards to glibc's own allocator, whose entry points it exports.
extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
void __libc_free(void* p);

void* malloc(std::size_t size) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
void* calloc(std::size_t count, std::size_t size) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(count, size);
}
void* realloc(void* p, std::size_t size) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) noexcept { __libc_free(p); }
}
#else
#error "test_no_allocation needs glibc or AddressSanitizer to count allocations"
#endif

namespace {

using oft::Index;
using oft_test::RowMat;

/// Heap allocations made by f().
template <class F>
long allocations_of(F&& f) {
  const long before = g_allocations.load();
  f();
  return g_allocations.load() - before;
}

/// Whether the OpenMP runtime itself allocates to enter a parallel region with the current
/// thread count: GCC's libgomp does not; LLVM's libomp (which clang links) does, 1 to 3 small
/// blocks a region in our runs, a serialized one too, and not the same number every time.
bool runtime_allocates_per_region() {
  long most = 0;
  for (int run = 0; run < 5; ++run)
    most = std::max(most, allocations_of([] {
                      OFT_OMP(parallel) { (void)oft::detail::thread_id(); }
                    }));
  return most > 0;
}

const char* const kCalls[] = {"set_generators", "apply",           "apply in place",
                              "apply_transposed", "backward for dX", "backward with dtheta",
                              "whole step"};
constexpr int kCallCount = 7;
constexpr int kRepeats = 3;

/// Fewest and most allocations over kRepeats steady-state calls of each call of one training
/// step (kCalls) for d features and N tokens.
struct CallCounts {
  std::array<long, kCallCount> fewest{}, most{};
};

/// Act is the activation type: Scalar, or bfloat16 for a float operator computing with
/// `arithmetic`.
template <class Scalar, class Policy, class Act = Scalar>
CallCounts step_allocations(const Policy& policy, double rho, Index d, Index n,
                            oft::Bf16Arithmetic arithmetic = oft::Bf16Arithmetic::Float) {
  const Index b = 32;
  oft_test::Rng rng(11);
  const auto spec = oft::BlockSpec::from_features(d, b);
  oft::BlockOrthogonal<Scalar, Policy> op(spec, policy);
  if constexpr (std::is_same_v<Act, oft::bfloat16>) op.set_bf16_arithmetic(arithmetic);
  const oft::Generators<Scalar> theta =
      oft_test::random_generators_with_rho<Scalar>(spec.generators(), b, rho, rng);
  oft::Generators<Scalar> dtheta(spec.generators(), b);
  RowMat<Act> x = oft_test::random_matrix<Scalar>(n, d, rng).template cast<Act>();
  RowMat<Act> dy = oft_test::random_matrix<Scalar>(n, d, rng).template cast<Act>();
  RowMat<Act> y(n, d), dx(n, d);
  oft::Workspace<Scalar> workspace;
  const std::function<void()> calls[kCallCount - 1] = {
      [&] { op.set_generators(theta.view()); },
      [&] { op.apply(oft::view(x), oft::view(y)); },
      [&] { op.apply(oft::view(y), oft::view(y)); },
      [&] { op.apply_transposed(oft::view(y), oft::view(y)); },
      [&] { op.backward(oft::view(x), oft::view(dy), oft::view(dx), {}, workspace); },
      [&] { op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace); }};
  const auto whole_step = [&] {
    for (const auto& call : calls) call();
  };
  whole_step();  // warm-up: the OpenMP team, the workspace, each thread's scratch
  CallCounts counts;
  counts.fewest.fill(std::numeric_limits<long>::max());
  for (int repeat = 0; repeat < kRepeats; ++repeat)
    for (int c = 0; c < kCallCount; ++c) {
      const long count = c + 1 < kCallCount ? allocations_of(calls[c]) : allocations_of(whole_step);
      counts.fewest[c] = std::min(counts.fewest[c], count);
      counts.most[c] = std::max(counts.most[c], count);
    }
  return counts;
}

/// Every steady-state call of one training step allocates nothing: set_generators (theta -> R,
/// the policy's plans), apply, in-place apply, apply_transposed, and backward with and without
/// dtheta (its per-generator VJP runs on per-thread scratch), with 1 and 2 threads, at two sizes
/// (8 generators and N = 160; 12 generators and N = 2048).
/// Under an OpenMP runtime that allocates to enter a region (libomp), the runtime's own blocks
/// are told apart by size-independence: each call's fewest allocations must be equal at both
/// sizes (an allocation per generator or per token would differ by 4 or by 1888) and small.
/// Both sizes have more than one 64-row panel, so both fork the same regions: libomp allocates
/// differently for a serialized region (one panel, `if` false) than for a forked one, which at
/// N = 64 made the counts differ by one in the AVX-512 build (panels of 64 rows).
template <class Scalar, class Policy, class Act = Scalar>
void check_step_does_not_allocate(Policy policy, double rho,
                                  oft::Bf16Arithmetic arithmetic = oft::Bf16Arithmetic::Float) {
  for (int threads : {1, 2}) {
    oft_test::ScopedThreads scoped(threads);
    const bool runtime_allocates = runtime_allocates_per_region();
    const CallCounts small =
        step_allocations<Scalar, Policy, Act>(policy, rho, 256, 160, arithmetic);
    const CallCounts large =
        step_allocations<Scalar, Policy, Act>(policy, rho, 384, 2048, arithmetic);
    for (int c = 0; c < kCallCount; ++c) {
      const std::string at =
          std::string(Policy::name) + (std::is_same_v<Act, Scalar> ? "" : " bfloat16") +
          " threads=" + std::to_string(threads) + ": " + kCalls[c];
      if (!runtime_allocates) {
        EXPECT_EQ(small.most[c], 0) << at << " (d=256, N=160)";
        EXPECT_EQ(large.most[c], 0) << at << " (d=384, N=2048)";
      } else {
        EXPECT_EQ(small.fewest[c], large.fewest[c]) << at << " (the OpenMP runtime allocates)";
        EXPECT_LE(large.fewest[c], 64) << at;
      }
    }
  }
}

TEST(NoAllocation, CayleyNeumannStepFloat) {
  check_step_does_not_allocate<float>(oft::CayleyNeumann{3}, 0.5);
}
// bfloat16 activations, with the Float arithmetic and, where the build has it, DotProduct.
TEST(NoAllocation, CayleyNeumannStepBf16) {
  check_step_does_not_allocate<float, oft::CayleyNeumann, oft::bfloat16>(
      oft::CayleyNeumann{3}, 0.5, oft::Bf16Arithmetic::Float);
  if (oft::detail::cpu::kHasBf16Dot)
    check_step_does_not_allocate<float, oft::CayleyNeumann, oft::bfloat16>(
        oft::CayleyNeumann{3}, 0.5, oft::Bf16Arithmetic::DotProduct);
}
TEST(NoAllocation, CayleyNeumannStepDouble) {
  check_step_does_not_allocate<double>(oft::CayleyNeumann{3}, 0.5);
}
TEST(NoAllocation, ExactCayleyStep) {
  check_step_does_not_allocate<float>(oft::ExactCayley{}, 0.5);
  check_step_does_not_allocate<double>(oft::ExactCayley{}, 0.5);
}
TEST(NoAllocation, PeftNeumannBranchStep) {
  check_step_does_not_allocate<float>(oft::peft::NeumannBranch{5}, 0.5);
}
// The tolerance policy's three paths (ToleranceCasesTakeTheirPaths checks which one each case
// takes): at rho = 0.5 a 1e-6 tolerance needs more terms than the free norm bound may give, so
// plan() computes the exact spectral norm (an eigen solve) for every generator; at rho = 1e-3
// the bound suffices; at rho = 1.5 the series diverges and exact Cayley takes over.
constexpr double kEigenPathRho = 0.5, kBoundPathRho = 1e-3, kDivergentRho = 1.5;

TEST(NoAllocation, CayleyNeumannToleranceStep) {
  check_step_does_not_allocate<double>(oft::CayleyNeumannTolerance(1e-6), kEigenPathRho);
  check_step_does_not_allocate<float>(oft::CayleyNeumannTolerance(1e-6), kBoundPathRho);
  check_step_does_not_allocate<double>(
      oft::CayleyNeumannTolerance(1e-6, oft::OnDivergence::UseExactCayley), kDivergentRho);
}

TEST(NoAllocation, ToleranceCasesTakeTheirPaths) {
  const Index d = 256, b = 32;
  const auto spec = oft::BlockSpec::from_features(d, b);
  const oft::CayleyNeumannTolerance policy(1e-6);
  const oft::CayleyNeumannTolerance fallback(1e-6, oft::OnDivergence::UseExactCayley);
  constexpr int kFreeBoundTerms = oft::CayleyNeumannTolerance::kFreeBoundTerms;
  // Generators exactly as step_allocations draws them (same seed and order).
  const auto generators = [&](double rho) {
    oft_test::Rng rng(11);
    return oft_test::random_generators_with_rho<double>(spec.generators(), b, rho, rng);
  };
  const auto free_bound_terms = [&](const oft::Generators<double>& theta, Index g) {
    return policy.terms_for(oft::detail::skew_spectral_norm_bound(theta.dense(g)));
  };
  const oft::Generators<double> eigen = generators(kEigenPathRho);
  const oft::Generators<double> bound = generators(kBoundPathRho);
  oft::BlockOrthogonal<double, oft::CayleyNeumannTolerance> divergent(spec, fallback);
  divergent.set_generators(generators(kDivergentRho));
  for (Index g = 0; g < spec.generators(); ++g) {
    const int eigen_terms = free_bound_terms(eigen, g);
    EXPECT_TRUE(eigen_terms < 0 || eigen_terms > kFreeBoundTerms) << "generator " << g;
    const int bound_terms = free_bound_terms(bound, g);
    EXPECT_TRUE(bound_terms >= 0 && bound_terms <= kFreeBoundTerms) << "generator " << g;
    EXPECT_TRUE(divergent.plan(g).exact) << "generator " << g;
  }
}

// The exception: the matrix exponential (a reference policy) runs Eigen's exp(), which allocates
// inside; the count depends on the generators only, never on the token count N.
TEST(NoAllocation, ExponentialAllocatesPerGeneratorOnly) {
  const Index d = 256, b = 32;
  oft_test::Rng rng(12);
  const auto spec = oft::BlockSpec::from_features(d, b);
  oft::BlockOrthogonal<double, oft::MatrixExponential> op(spec);
  op.set_generators(oft_test::random_generators_with_rho<double>(spec.generators(), b, 0.5, rng));
  oft::Generators<double> dtheta(spec.generators(), b);
  long counts[2] = {0, 0};
  int run = 0;
  for (Index n : {Index(64), Index(2048)}) {
    RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
    RowMat<double> dy = oft_test::random_matrix<double>(n, d, rng), dx(n, d);
    oft::Workspace<double> workspace;
    const auto backward = [&] {
      op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);
    };
    backward();
    counts[run++] = allocations_of(backward);
  }
  EXPECT_GT(counts[0], 0);
  EXPECT_EQ(counts[0], counts[1]);
}

// The counter itself works (else every EXPECT_EQ(..., 0) above would pass vacuously): it sees
// operator new and Eigen's matrices. The pointers escape through a volatile sink, since
// compilers may elide an allocation whose memory is never observed (clang does).
void* volatile g_sink = nullptr;

TEST(NoAllocation, CounterCounts) {
  EXPECT_GE(allocations_of([] {
              std::vector<int> v(100);
              g_sink = v.data();
            }),
            1);
  EXPECT_GE(allocations_of([] {
              Eigen::MatrixXf m = Eigen::MatrixXf::Zero(64, 64);
              g_sink = m.data();
            }),
            1);
  g_sink = nullptr;
}

}  // namespace
