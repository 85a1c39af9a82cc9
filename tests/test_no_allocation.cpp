/// Steady-state calls of the CPU hot paths allocate nothing (issue 11): a counting global
/// operator new (this executable only) counts heap allocations made between two marks.
///
/// - one whole training step of BlockOrthogonal: set_generators, apply (also in place),
///   apply_transposed, and backward with and without dtheta, with 1 and 2 threads, for every
///   policy but the exponential: no allocation at all once the OpenMP team and each thread's
///   b x b scratch (detail/thread_scratch.hpp) exist;
/// - the matrix exponential allocates inside Eigen's exp(), per generator, never per token.

#include <atomic>
#include <cerrno>
#include <cstdlib>

#include <gtest/gtest.h>

#include "oft/oft.hpp"
#include "test_support.hpp"

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

/// Every steady-state call of one training step allocates nothing: set_generators (theta -> R,
/// the policy's plans), apply, in-place apply, apply_transposed, and backward with and without
/// dtheta (its per-generator VJP runs on per-thread scratch), with 1 and 2 threads and N = 64 and
/// 2048.
template <class Scalar, class Policy>
void check_step_does_not_allocate(Policy policy, double rho) {
  const Index d = 256, b = 32;
  oft_test::Rng rng(11);
  const auto spec = oft::BlockSpec::from_features(d, b);
  oft::BlockOrthogonal<Scalar, Policy> op(spec, policy);
  const oft::Generators<Scalar> theta =
      oft_test::random_generators_with_rho<Scalar>(spec.generators(), b, rho, rng);
  oft::Generators<Scalar> dtheta(spec.generators(), b);
  for (int threads : {1, 2}) {
    oft_test::ScopedThreads scoped(threads);
    for (Index n : {Index(64), Index(2048)}) {
      const std::string at = std::string(Policy::name) + " threads=" + std::to_string(threads) +
                             " N=" + std::to_string(n);
      RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
      RowMat<Scalar> y(n, d), dy = oft_test::random_matrix<Scalar>(n, d, rng), dx(n, d);
      oft::Workspace<Scalar> workspace;
      const auto step = [&] {
        op.set_generators(theta.view());
        op.apply(oft::view(x), oft::view(y));
        op.apply(oft::view(y), oft::view(y));
        op.apply_transposed(oft::view(y), oft::view(y));
        op.backward(oft::view(x), oft::view(dy), oft::view(dx), {}, workspace);
        op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);
      };
      step();  // warm-up: the OpenMP team, the workspace, each thread's scratch
      EXPECT_EQ(allocations_of([&] { op.set_generators(theta.view()); }), 0) << at;
      EXPECT_EQ(allocations_of([&] { op.apply(oft::view(x), oft::view(y)); }), 0) << at;
      EXPECT_EQ(allocations_of([&] { op.apply(oft::view(y), oft::view(y)); }), 0) << at;
      EXPECT_EQ(allocations_of([&] { op.apply_transposed(oft::view(y), oft::view(y)); }), 0) << at;
      EXPECT_EQ(allocations_of([&] {
                  op.backward(oft::view(x), oft::view(dy), oft::view(dx), {}, workspace);
                }),
                0)
          << at << " backward for dX";
      EXPECT_EQ(allocations_of([&] {
                  op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);
                }),
                0)
          << at << " backward with dtheta";
      EXPECT_EQ(allocations_of(step), 0) << at << " whole step";
    }
  }
}

TEST(NoAllocation, CayleyNeumannStepFloat) {
  check_step_does_not_allocate<float>(oft::CayleyNeumann{3}, 0.5);
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
// At rho = 0.5 a 1e-6 tolerance needs more terms than the free norm bound allows, so plan()
// takes the exact spectral norm (an eigen solve) for every generator; at rho = 0.05 the bound
// suffices. A divergent generator falls back to exact Cayley.
TEST(NoAllocation, CayleyNeumannToleranceStep) {
  check_step_does_not_allocate<double>(oft::CayleyNeumannTolerance(1e-6), 0.5);
  check_step_does_not_allocate<float>(oft::CayleyNeumannTolerance(1e-6), 0.05);
  check_step_does_not_allocate<double>(
      oft::CayleyNeumannTolerance(1e-6, oft::OnDivergence::UseExactCayley), 1.5);
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

// The counter itself works (else every EXPECT_EQ(..., 0) above would pass vacuously).
TEST(NoAllocation, CounterCounts) {
  EXPECT_GE(allocations_of([] { std::vector<int> v(100); (void)v; }), 1);
}

}  // namespace
