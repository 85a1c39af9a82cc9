# CUDA backend: finds nvcc and the CUDA toolkit when OFT_ENABLE_CUDA is AUTO or ON and defines
#   OFT_WITH_CUDA   ON when the backend's tests and benchmarks are built
#   oft::cuda       INTERFACE target: oft's include directory + CUDA::cudart + CUDA::cublas
# The headers are Eigen-free (nvcc never sees Eigen). Default architecture: sm_90 (H100/H200);
# pass -DCMAKE_CUDA_ARCHITECTURES=... (e.g. native, 80, "80;90") to change it.

set(OFT_WITH_CUDA OFF)
string(TOUPPER "${OFT_ENABLE_CUDA}" _oft_cuda_mode)
if(NOT _oft_cuda_mode STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS "/usr/local/cuda/bin/nvcc")
    find_program(_oft_nvcc_on_path nvcc)
    if(NOT _oft_nvcc_on_path)
      set(CMAKE_CUDA_COMPILER "/usr/local/cuda/bin/nvcc" CACHE FILEPATH "CUDA compiler")
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures oft's tests/benchmarks build for")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(OFT_WITH_CUDA ON)
    message(STATUS "oft: CUDA backend enabled (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
  elseif(_oft_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "oft: OFT_ENABLE_CUDA=ON but no CUDA compiler (nvcc) was found")
  else()
    message(STATUS "oft: no nvcc found, CUDA backend tests/benchmarks not built")
  endif()
endif()

if(OFT_WITH_CUDA)
  add_library(oft_cuda INTERFACE)
  add_library(oft::cuda ALIAS oft_cuda)
  target_include_directories(oft_cuda INTERFACE
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  # Only a C++ feature: a consumer may link oft::cuda into host-only targets too, and nvcc 13
  # compiles C++17 by default.
  target_compile_features(oft_cuda INTERFACE cxx_std_17)
  target_link_libraries(oft_cuda INTERFACE CUDA::cudart CUDA::cublas)
  set_target_properties(oft_cuda PROPERTIES EXPORT_NAME cuda)
endif()

# Developer flags for the project's own .cu targets: host-compiler warnings, nvcc warnings as
# errors when OFT_WARNINGS_AS_ERRORS, line info for compute-sanitizer and Nsight Compute.
function(oft_cuda_dev_target target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra -lineinfo>)
  if(OFT_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
  set_target_properties(${target} PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)
endfunction()
