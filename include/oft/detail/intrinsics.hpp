#pragma once
/// \file detail/intrinsics.hpp
/// Includes the x86 intrinsics headers with one GCC 12 false positive silenced; every oft header
/// that includes Eigen includes this first.
///
/// Why: GCC 12's <immintrin.h> (Debian 12 ships 12.2) defines `_mm256_undefined_pd()` and its kin
/// as a self-initialized local (`__m256d __Y = __Y;`). Wherever an AVX-512 intrinsic that takes
/// such a value is inlined (Eigen 3.4's AVX-512 packet transposes, in every GEMM),
/// -Wmaybe-uninitialized (at -O3 sometimes -Wuninitialized) reports `__Y` at a line of
/// avx512fintrin.h, hundreds of times per translation unit, and -Werror builds fail. GCC files
/// the warning under the intrinsic header's own line, so ignoring it for the lines of
/// <immintrin.h> alone, as done here, silences exactly these reports and leaves the warning on
/// in oft's code and the user's.
/// A translation unit that includes <immintrin.h> (or Eigen) before any oft header gets the
/// header without this pragma and so still sees the reports.

// Scoped to the compilers where it was seen (GCC 12 and older); clang has no such warning.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && __GNUC__ <= 12 && \
    (defined(__x86_64__) || defined(__i386__))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same report, worded so at -O3
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
