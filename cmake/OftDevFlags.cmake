# Helpers that apply developer flags to the project's *own* targets
# (tests, examples, benchmarks). Never applied to the oft::oft interface
# library, so consumers are not affected.

if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(_oft_gnu_like ON)
else()
  set(_oft_gnu_like OFF)
endif()

# Warnings (+ -Werror when OFT_WARNINGS_AS_ERRORS) and -march=${OFT_MARCH}.
function(oft_dev_target target)
  if(_oft_gnu_like)
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(OFT_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
    if(NOT OFT_MARCH STREQUAL "")
      target_compile_options(${target} PRIVATE -march=${OFT_MARCH})
    endif()
    if(NOT OFT_WITH_OPENMP)
      # Without -fopenmp, -Wall warns about every `#pragma omp`.
      target_compile_options(${target} PRIVATE -Wno-unknown-pragmas)
    endif()
  elseif(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
    if(OFT_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE /WX)
    endif()
  endif()
endfunction()

# A program of several sources compiles them as one translation unit (CMake's unity build): its
# sources instantiate the same kernels, file readers and GoogleTest templates, which one
# translation unit parses, instantiates and optimizes once instead of once per source. GCC 12
# -O3 on a 2-vCPU Intel Xeon, seconds of compiling as separate units (in the full -j2 build) and
# as one (alone): the oft tool 164 -> 85, dialects_lycoris 156 -> 96, diffusion_merge 85 -> 60,
# conv_oft 78 -> 66. (tests/cuda's CPU reference is left out: its two sources each define the
# same file-local helper.) -DOFT_UNITY_BUILD=OFF compiles every source alone again (to check
# that each includes what it uses); the headers' own self-containment is checked one header per
# unit either way (tests/hygiene/header_alone.cmake).
function(oft_unity_target target)
  if(OFT_UNITY_BUILD)
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 0)
  endif()
endfunction()

# ASan + UBSan when OFT_SANITIZE (tests and examples only).
# Sanitizer builds compile at -O0, which instruments everything just as -O1 does (ASan, UBSan,
# eigen_assert) at a third of the compile time for oft's Eigen-heavy test programs (clang 14 with
# ASan + UBSan, test_norm_clipping: 15.8 s at -O0 against 46.4 s at -O1; its tests then run 3.2 s
# instead of 0.4 s). The programs that run for seconds even at -O1 (the kernel grids, the
# allocation counts, the gradient checks of whole operators) keep the build type's optimization:
# at -O0 they would run ten times longer than they take to compile. Measured on a 2-core Intel Xeon: every program
# of this list ran longer than 2 s at -O1 under ASan, every other one less.
set(OFT_SANITIZE_OPTIMIZED
    test_block_orthogonal test_no_allocation test_backward_gradcheck test_bf16
    serving_test_adapter_bank families_test_butterfly io_test_safetensors_writer
    quant_test_int4_group quant_test_qoft_linear)

function(oft_sanitize_target target)
  if(OFT_SANITIZE)
    if(NOT _oft_gnu_like)
      message(FATAL_ERROR "oft: OFT_SANITIZE requires GCC or Clang")
    endif()
    set(_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_compile_options(${target} PRIVATE ${_san})
    target_link_options(${target} PRIVATE ${_san})
    if(NOT target IN_LIST OFT_SANITIZE_OPTIMIZED)
      # Appended after CMAKE_CXX_FLAGS_<CONFIG>, so it wins over the build type's -O1.
      target_compile_options(${target} PRIVATE -O0)
    endif()
  endif()
endfunction()

# Benchmarks: always optimised, regardless of CMAKE_BUILD_TYPE.
function(oft_bench_target target)
  oft_dev_target(${target})
  if(_oft_gnu_like)
    # Appended after CMAKE_CXX_FLAGS_<CONFIG>, so -O3 wins over e.g. -O0/-O2.
    target_compile_options(${target} PRIVATE -O3)
    target_compile_definitions(${target} PRIVATE NDEBUG)
  endif()
endfunction()
