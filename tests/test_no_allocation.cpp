/// Steady-state calls of the CPU hot paths allocate nothing (issue 11): a counting global
/// operator new (this executable only) counts heap allocations made between two marks.
///
/// - apply, apply_transposed and backward for dX alone: no allocation at all, with 1 and 2
///   threads, once the OpenMP team exists;
/// - backward with dtheta: the token loop allocates nothing; the per-generator stage (the
///   policy's b x b vector-Jacobian product, in Eigen) does, so the count is a function of the
///   generators, never of the token count N. The test pins both facts.

#include <atomic>
#include <cstdlib>
#include <new>

#include <gtest/gtest.h>

#include "oft/oft.hpp"
#include "test_support.hpp"

namespace {
std::atomic<long> g_allocations{0};
}

// These replace the global operators for this program: new is malloc, delete is free. GCC's
// -Wmismatched-new-delete cannot see that the pair is consistent.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
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

template <class Scalar>
void check_hot_paths_do_not_allocate() {
  const Index d = 256, b = 32;
  oft_test::Rng rng(11);
  const auto spec = oft::BlockSpec::from_features(d, b);
  oft::BlockOrthogonal<Scalar, oft::CayleyNeumann> op(spec, oft::CayleyNeumann{3});
  op.set_generators(oft_test::random_generators_with_rho<Scalar>(spec.generators(), b, 0.5, rng));
  oft::Generators<Scalar> dtheta(spec.generators(), b);
  for (int threads : {1, 2}) {
    oft_test::ScopedThreads scoped(threads);
    long dtheta_allocations[2] = {0, 0};
    int run = 0;
    for (Index n : {Index(64), Index(2048)}) {
      const std::string at = "threads=" + std::to_string(threads) + " N=" + std::to_string(n);
      RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
      RowMat<Scalar> y(n, d), dy = oft_test::random_matrix<Scalar>(n, d, rng), dx(n, d);
      oft::Workspace<Scalar> workspace;
      const auto everything = [&] {
        op.apply(oft::view(x), oft::view(y));
        op.apply(oft::view(y), oft::view(y));
        op.apply_transposed(oft::view(y), oft::view(y));
        op.backward(oft::view(x), oft::view(dy), oft::view(dx), {}, workspace);
        op.backward(oft::view(x), oft::view(dy), oft::view(dy), dtheta.view(), workspace);
      };
      everything();  // warm-up: the OpenMP team, the workspace
      EXPECT_EQ(allocations_of([&] { op.apply(oft::view(x), oft::view(y)); }), 0) << at;
      EXPECT_EQ(allocations_of([&] { op.apply(oft::view(y), oft::view(y)); }), 0) << at;
      EXPECT_EQ(allocations_of([&] { op.apply_transposed(oft::view(y), oft::view(y)); }), 0) << at;
      EXPECT_EQ(allocations_of([&] {
                  op.backward(oft::view(x), oft::view(dy), oft::view(dx), {}, workspace);
                }),
                0)
          << at << " backward for dX";
      dtheta_allocations[run++] = allocations_of([&] {
        op.backward(oft::view(x), oft::view(dy), oft::view(dx), dtheta.view(), workspace);
      });
    }
    // The dtheta stage allocates per generator (its b x b Eigen temporaries), not per token.
    EXPECT_EQ(dtheta_allocations[0], dtheta_allocations[1]) << "threads=" << threads;
    EXPECT_LE(dtheta_allocations[1], 64 * spec.generators()) << "threads=" << threads;
  }
}

TEST(NoAllocation, HotPathsFloat) { check_hot_paths_do_not_allocate<float>(); }
TEST(NoAllocation, HotPathsDouble) { check_hot_paths_do_not_allocate<double>(); }

// The counter itself works (else every EXPECT_EQ(..., 0) above would pass vacuously).
TEST(NoAllocation, CounterCounts) {
  EXPECT_GE(allocations_of([] { std::vector<int> v(100); (void)v; }), 1);
}

}  // namespace
