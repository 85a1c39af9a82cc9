#pragma once
/// \file cuda/kernels_generators.hpp
/// Generator-side kernels: packed theta -> rotation block R_g, and the VJP G_g -> dtheta_g.
/// One thread block per generator; every b x b matrix lives in shared memory, so these kernels
/// bound the block size (generator_shared_bytes). The math is the CPU backend's
/// (cayley.hpp, cayley_neumann.hpp), written for a thread block:
///
/// - Neumann, R = sum_j c_j Q^j by Horner: S = Q + c_k I, then S <- S Q + c_j I for j = k-1..0.
/// - Exact Cayley: solve (I - Q) R = (I + Q) by Gauss-Jordan elimination with partial pivoting.
/// - Neumann VJP: the upper-right block of p([[Q^T, G], [0, Q^T]]) by the same Horner pass
///   (P2 <- P1 G + P2 Q^T, P1 <- P1 Q^T + c_j I), three products per term, no stored powers.
/// - Exact VJP: dQ = (I + R)^T G (I - Q)^-T, i.e. dQ^T = (I - Q)^-1 (G^T (I + R)).
/// - Packing: dtheta(p,q) = dQ(p,q) - dQ(q,p) (SPEC section 3).

#include <cuda_runtime.h>

#include <cfloat>
#include <cstddef>
#include <utility>

#include "../index.hpp"
#include "../neumann.hpp"
#include "error.hpp"
#include "launch.hpp"
#include "workspace.hpp"

namespace oft::detail::cuda {

inline constexpr int kGeneratorThreads = 256;

/// Shared-memory matrices the generator kernels keep (the VJP is the largest user):
/// Neumann VJP: Q^T, G, P1, P2 and two products (6 b^2); exact VJP: I - Q, G, R, rhs (4 b^2)
/// plus one column of elimination factors.
inline Index generator_matrices(bool exact) { return exact ? 4 : 6; }

template <class P>
std::size_t generator_shared_bytes(Index b, bool exact) {
  return static_cast<std::size_t>(generator_matrices(exact) * b * b + b) * sizeof(P);
}

template <class P>
Index largest_block_size(bool exact, std::size_t limit) {
  Index b = 1;
  while (generator_shared_bytes<P>(b + 1, exact) <= limit) ++b;
  return b;
}

// ---------------------------------------------------------------------------------------------
// Thread-block building blocks. Every function is called by all threads of the block and ends
// with __syncthreads(), so its result is visible to every thread on return.
// ---------------------------------------------------------------------------------------------

/// Q (b x b, row-major) from the packed strict upper triangle. transposed: Q^T instead.
/// Negation is written 0 - x, not -x: it is the same for every x != 0 but gives +0 for x = +-0,
/// so zero theta gives R = I bit for bit as on the CPU (k = 0 keeps Q's entries in R, and a -0
/// there was the one bitwise difference the first GPU run found).
template <class P>
__device__ void unpack_skew_block(const P* theta, int b, P* q, bool transposed) {
  for (int e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int i = e / b, j = e % b;
    P value = P(0);
    if (i < j) value = theta[packed_index(i, j, b)];
    if (i > j) value = P(0) - theta[packed_index(j, i, b)];
    q[e] = transposed ? P(0) - value : value;
  }
  __syncthreads();
}

/// c = a * m (+ c when accumulate) for b x b row-major matrices; c aliases neither input.
template <class P>
__device__ void multiply_block(const P* a, const P* m, P* c, int b, bool accumulate) {
  for (int e = threadIdx.x; e < b * b; e += blockDim.x) {
    const int i = e / b, j = e % b;
    P sum = accumulate ? c[e] : P(0);
    for (int l = 0; l < b; ++l) sum += a[i * b + l] * m[l * b + j];
    c[e] = sum;
  }
  __syncthreads();
}

template <class P>
__device__ void add_to_diagonal(P* m, int b, P value) {
  for (int i = threadIdx.x; i < b; i += blockDim.x) m[i * b + i] += value;
  __syncthreads();
}

/// Solves a X = rhs for X (into rhs) by Gauss-Jordan elimination with partial pivoting; a is
/// destroyed. `factors` holds b scalars. For a = I - Q with Q skew, a's symmetric part is I, so
/// every pivot is nonzero; pivoting keeps the growth small for large ||Q||.
/// Returns, to every thread, whether some pivot had a magnitude <= pivot_floor or was not a
/// number (the elimination still runs to the end; its result is then meaningless). A negative
/// pivot_floor skips the test (the callers whose matrix is invertible by construction).
template <class P>
__device__ bool gauss_jordan_solve(P* a, P* rhs, int b, P* factors, P pivot_floor = P(-1)) {
  __shared__ int pivot_row;
  __shared__ int small_pivot;
  if (threadIdx.x == 0) small_pivot = 0;  // read after the loop's barriers
  for (int c = 0; c < b; ++c) {
    if (threadIdx.x == 0) {
      int best = c;
      P best_abs = fabs(a[c * b + c]);
      for (int i = c + 1; i < b; ++i) {
        const P v = fabs(a[i * b + c]);
        if (v > best_abs) {
          best_abs = v;
          best = i;
        }
      }
      pivot_row = best;
      if (pivot_floor >= P(0) && !(best_abs > pivot_floor)) small_pivot = 1;  // NaN included
    }
    __syncthreads();
    const int p = pivot_row;
    if (p != c) {
      for (int j = threadIdx.x; j < b; j += blockDim.x) {
        P t = a[c * b + j];
        a[c * b + j] = a[p * b + j];
        a[p * b + j] = t;
        t = rhs[c * b + j];
        rhs[c * b + j] = rhs[p * b + j];
        rhs[p * b + j] = t;
      }
      __syncthreads();
    }
    const P inverse_pivot = P(1) / a[c * b + c];
    __syncthreads();  // everyone has read the pivot before row c is scaled
    for (int j = threadIdx.x; j < b; j += blockDim.x) {
      a[c * b + j] *= inverse_pivot;
      rhs[c * b + j] *= inverse_pivot;
    }
    for (int i = threadIdx.x; i < b; i += blockDim.x)
      if (i != c) factors[i] = a[i * b + c];  // row c is being scaled concurrently
    __syncthreads();
    for (int e = threadIdx.x; e < b * b; e += blockDim.x) {
      const int i = e / b, j = e % b;
      if (i == c) continue;
      const P f = factors[i];
      a[e] -= f * a[c * b + j];
      rhs[e] -= f * rhs[c * b + j];
    }
    __syncthreads();
  }
  return small_pivot != 0;
}

/// Unit roundoff of the parameter type, times 2: FLT_EPSILON / DBL_EPSILON (what Eigen's
/// NumTraits<P>::epsilon() returns), usable in device code.
template <class P>
__host__ __device__ constexpr P machine_epsilon() {
  return sizeof(P) == sizeof(float) ? P(FLT_EPSILON) : P(DBL_EPSILON);
}

/// The pivot magnitude at or below which invert_transposed_blocks calls a b x b block singular:
/// b * eps * max|m_ij|, Eigen's default threshold for FullPivLU::isInvertible (the CPU
/// unmerge's test), where max|m_ij| is the largest pivot of full pivoting.
template <class P>
__host__ __device__ P singular_pivot_floor(int b, P max_abs) {
  return P(b) * machine_epsilon<P>() * max_abs;
}

/// max |m_e| over `count` entries, serially in thread 0, broadcast to every thread. Serial
/// because its one caller (unmerge) runs once per model.
template <class P>
__device__ P block_max_abs(const P* m, int count) {
  __shared__ P result;
  if (threadIdx.x == 0) {
    P largest = P(0);
    for (int e = 0; e < count; ++e)
      if (fabs(m[e]) > largest) largest = fabs(m[e]);  // NaN entries are caught after the solve
    result = largest;
  }
  __syncthreads();
  return result;
}

/// True (to every thread) when some entry of m is infinite or NaN.
template <class P>
__device__ bool any_not_finite(const P* m, int count) {
  __shared__ int found;
  if (threadIdx.x == 0) found = 0;
  __syncthreads();
  for (int e = threadIdx.x; e < count; e += blockDim.x)
    if (!isfinite(m[e])) found = 1;  // every writer writes the same value
  __syncthreads();
  return found != 0;
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

/// R_g for generator g = blockIdx.x. terms >= 0: Cayley-Neumann with k = terms; < 0: exact.
template <class P>
__global__ void build_rotations_kernel(const P* theta, Index ld_theta, int b, int terms,
                                       P* blocks) {
  P* s = reinterpret_cast<P*>(dynamic_shared_memory());
  const Index g = blockIdx.x;
  const P* row = theta + g * ld_theta;
  P* out = blocks + g * static_cast<Index>(b) * b;
  const int area = b * b;
  P* q = s;
  P* r = s + area;
  P* t = s + 2 * area;
  if (terms >= 0) {
    unpack_skew_block(row, b, q, false);
    for (int e = threadIdx.x; e < area; e += blockDim.x) r[e] = q[e];
    __syncthreads();
    add_to_diagonal(r, b, P(neumann_coefficient(terms, terms)));
    for (int j = terms - 1; j >= 0; --j) {
      multiply_block(r, q, t, b, false);
      add_to_diagonal(t, b, P(neumann_coefficient(j, terms)));
      P* swap = r;
      r = t;
      t = swap;
    }
  } else {
    P* factors = s + 3 * area;
    unpack_skew_block(row, b, r, false);  // r = Q, then rhs = I + Q, a = I - Q
    for (int e = threadIdx.x; e < area; e += blockDim.x) {
      const P identity = (e / b == e % b) ? P(1) : P(0);
      q[e] = identity - r[e];
      r[e] = identity + r[e];
    }
    __syncthreads();
    gauss_jordan_solve(q, r, b, factors);
  }
  for (int e = threadIdx.x; e < area; e += blockDim.x) out[e] = r[e];
}

/// dtheta_g from G_g = dL/dR_g (grads: generators x b x b) for generator g = blockIdx.x.
template <class P>
__global__ void rotation_vjp_kernel(const P* theta, Index ld_theta, int b, int terms,
                                    const P* blocks, const P* grads, P* dtheta,
                                    Index ld_dtheta) {
  P* s = reinterpret_cast<P*>(dynamic_shared_memory());
  const Index g = blockIdx.x;
  const int area = b * b;
  const P* row = theta + g * ld_theta;
  const P* grad = grads + g * static_cast<Index>(area);
  P* dq = nullptr;  // dQ, or its transpose for the exact branch
  bool dq_transposed = false;
  if (terms >= 0) {
    P* a = s;  // Q^T
    P* gs = s + area;
    P* p1 = s + 2 * area;
    P* p2 = s + 3 * area;
    P* n1 = s + 4 * area;
    P* n2 = s + 5 * area;
    unpack_skew_block(row, b, a, true);
    for (int e = threadIdx.x; e < area; e += blockDim.x) {
      gs[e] = grad[e];
      p1[e] = a[e];
      p2[e] = grad[e];
    }
    __syncthreads();
    add_to_diagonal(p1, b, P(neumann_coefficient(terms, terms)));
    for (int j = terms - 1; j >= 0; --j) {
      multiply_block(p1, gs, n2, b, false);
      multiply_block(p2, a, n2, b, true);
      multiply_block(p1, a, n1, b, false);
      add_to_diagonal(n1, b, P(neumann_coefficient(j, terms)));
      P* swap = p1;
      p1 = n1;
      n1 = swap;
      swap = p2;
      p2 = n2;
      n2 = swap;
    }
    dq = p2;
  } else {
    P* a = s;  // I - Q
    P* gs = s + area;
    P* rs = s + 2 * area;  // I + R
    P* rhs = s + 3 * area;
    P* factors = s + 4 * area;
    const P* rotation = blocks + g * static_cast<Index>(area);
    unpack_skew_block(row, b, a, false);
    for (int e = threadIdx.x; e < area; e += blockDim.x) {
      const P identity = (e / b == e % b) ? P(1) : P(0);
      a[e] = identity - a[e];
      gs[e] = grad[e];
      rs[e] = identity + rotation[e];
    }
    __syncthreads();
    // rhs = G^T (I + R)
    for (int e = threadIdx.x; e < area; e += blockDim.x) {
      const int i = e / b, j = e % b;
      P sum = P(0);
      for (int l = 0; l < b; ++l) sum += gs[l * b + i] * rs[l * b + j];
      rhs[e] = sum;
    }
    __syncthreads();
    gauss_jordan_solve(a, rhs, b, factors);
    dq = rhs;
    dq_transposed = true;
  }
  P* out = dtheta + g * ld_dtheta;
  for (int e = threadIdx.x; e < area; e += blockDim.x) {
    const int p = e / b, q = e % b;
    if (p >= q) continue;
    const P upper = dq_transposed ? dq[q * b + p] : dq[e];
    const P lower = dq_transposed ? dq[e] : dq[q * b + p];
    out[packed_index(p, q, b)] = upper - lower;
  }
}

/// out_g = (R_g^T)^-1 for every block (for unmerge with a not exactly orthogonal R), and
/// singular[g] = 1 when R_g is singular by the CPU unmerge's criterion (a pivot of magnitude at
/// most singular_pivot_floor, or a non-finite pivot or result), else 0. out_g is meaningless
/// where singular[g] is 1.
template <class P>
__global__ void invert_transposed_blocks_kernel(const P* blocks, int b, P* out, int* singular) {
  P* s = reinterpret_cast<P*>(dynamic_shared_memory());
  const Index g = blockIdx.x;
  const int area = b * b;
  P* a = s;
  P* rhs = s + area;
  P* factors = s + 2 * area;
  const P* r = blocks + g * static_cast<Index>(area);
  for (int e = threadIdx.x; e < area; e += blockDim.x) {
    const int i = e / b, j = e % b;
    a[e] = r[j * b + i];
    rhs[e] = i == j ? P(1) : P(0);
  }
  __syncthreads();
  const P floor = singular_pivot_floor(b, block_max_abs(a, area));
  const bool small_pivot = gauss_jordan_solve(a, rhs, b, factors, floor);
  const bool not_finite = any_not_finite(rhs, area);
  if (threadIdx.x == 0) singular[g] = (small_pivot || not_finite) ? 1 : 0;
  P* o = out + g * static_cast<Index>(area);
  for (int e = threadIdx.x; e < area; e += blockDim.x) o[e] = rhs[e];
}

// ---------------------------------------------------------------------------------------------
// Launchers (host)
// ---------------------------------------------------------------------------------------------

template <class P>
void build_rotations(const P* theta, Index ld_theta, Index generators, Index b, int terms,
                     P* blocks, cudaStream_t stream, const char* where) {
  if (generators == 0) return;
  const std::size_t bytes = static_cast<std::size_t>(3 * b * b + b) * sizeof(P);
  require_dynamic_shared(build_rotations_kernel<P>, bytes, b, "build_rotations_kernel", where);
  build_rotations_kernel<P><<<static_cast<unsigned>(generators), kGeneratorThreads, bytes,
                              stream>>>(theta, ld_theta, static_cast<int>(b), terms, blocks);
  check_launch("build_rotations_kernel", where);
}

template <class P>
void rotation_vjp(const P* theta, Index ld_theta, Index generators, Index b, int terms,
                  const P* blocks, const P* grads, P* dtheta, Index ld_dtheta,
                  cudaStream_t stream) {
  const char* where = "BlockOrthogonal<cuda>::backward (rotation VJP)";
  if (generators == 0) return;
  const std::size_t bytes = generator_shared_bytes<P>(b, terms < 0);
  require_dynamic_shared(rotation_vjp_kernel<P>, bytes, b, "rotation_vjp_kernel", where);
  rotation_vjp_kernel<P><<<static_cast<unsigned>(generators), kGeneratorThreads, bytes,
                           stream>>>(theta, ld_theta, static_cast<int>(b), terms, blocks, grads,
                                     dtheta, ld_dtheta);
  check_launch("rotation_vjp_kernel", where);
}

/// out_g = (R_g^T)^-1 and singular[g] (invert_transposed_blocks_kernel) for `count` blocks.
template <class P>
void invert_transposed_blocks(const P* blocks, Index count, Index b, P* out, int* singular,
                              cudaStream_t stream) {
  const char* where = "OftLinear<cuda>::unmerge";
  if (count == 0) return;
  const std::size_t bytes = static_cast<std::size_t>(2 * b * b + b) * sizeof(P);
  require_dynamic_shared(invert_transposed_blocks_kernel<P>, bytes, b,
                         "invert_transposed_blocks_kernel", where);
  invert_transposed_blocks_kernel<P><<<static_cast<unsigned>(count), kGeneratorThreads, bytes,
                                       stream>>>(blocks, static_cast<int>(b), out, singular);
  check_launch("invert_transposed_blocks_kernel", where);
}

}  // namespace oft::detail::cuda
