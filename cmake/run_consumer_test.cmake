# Invoked by ctest (cmake -P) to check that oft can be consumed downstream.
#
# find_package mode (OFT_BUILD_DIR set):
#   1. cmake --install <OFT_BUILD_DIR> --prefix <CONSUMER_PREFIX>
#   2. configure tests/consumer with CMAKE_PREFIX_PATH=<CONSUMER_PREFIX>
# add_subdirectory mode (OFT_SOURCE_DIR set):
#   2. configure tests/consumer with OFT_CONSUMER_SOURCE_DIR=<OFT_SOURCE_DIR>
# then in both modes: 3. build it, 4. run the `consumer` executable (and `consumer_cuda`, built
# when the package provides oft::cuda).
#
# Inputs (-D): CONSUMER_SOURCE_DIR, CONSUMER_BINARY_DIR, OFT_CONFIG,
#   CONSUMER_CXX_COMPILER, CONSUMER_GENERATOR, optional CONSUMER_EXTRA_ARGS (;-list of -D...),
#   and either
#   OFT_BUILD_DIR + CONSUMER_PREFIX, or OFT_SOURCE_DIR.

cmake_minimum_required(VERSION 3.25)

foreach(var CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer_test: ${var} must be set")
  endif()
endforeach()
if(NOT OFT_CONFIG)
  set(OFT_CONFIG Release)
endif()

function(run_step what)
  message(STATUS "[consumer] ${what}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[consumer] ${what} failed (${rc})")
  endif()
endfunction()

set(configure_args -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}"
                   "-DCMAKE_BUILD_TYPE=${OFT_CONFIG}")
if(CONSUMER_GENERATOR)
  list(APPEND configure_args -G "${CONSUMER_GENERATOR}")
endif()
if(CONSUMER_CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}")
endif()
if(CONSUMER_EXTRA_ARGS)
  list(APPEND configure_args ${CONSUMER_EXTRA_ARGS})
endif()

# Always start from scratch so stale caches cannot hide packaging bugs.
file(REMOVE_RECURSE "${CONSUMER_BINARY_DIR}")

if(OFT_BUILD_DIR)
  if(NOT CONSUMER_PREFIX)
    message(FATAL_ERROR "run_consumer_test: CONSUMER_PREFIX must be set with OFT_BUILD_DIR")
  endif()
  file(REMOVE_RECURSE "${CONSUMER_PREFIX}")
  run_step("install" "${CMAKE_COMMAND}" --install "${OFT_BUILD_DIR}"
           --prefix "${CONSUMER_PREFIX}" --config "${OFT_CONFIG}")
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${CONSUMER_PREFIX}"
                             "-DOFT_CONSUMER_REQUIRE_PREFIX=${CONSUMER_PREFIX}")
elseif(OFT_SOURCE_DIR)
  list(APPEND configure_args "-DOFT_CONSUMER_SOURCE_DIR=${OFT_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer_test: set OFT_BUILD_DIR or OFT_SOURCE_DIR")
endif()

run_step("configure" "${CMAKE_COMMAND}" ${configure_args})
run_step("build" "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}" --config "${OFT_CONFIG}")

set(exe "${CONSUMER_BINARY_DIR}/consumer")
if(NOT EXISTS "${exe}" AND EXISTS "${CONSUMER_BINARY_DIR}/${OFT_CONFIG}/consumer")
  set(exe "${CONSUMER_BINARY_DIR}/${OFT_CONFIG}/consumer")
endif()
run_step("run" "${exe}")

# Built only when the package provided oft::cuda (tests/consumer/CMakeLists.txt).
set(cuda_exe "${CONSUMER_BINARY_DIR}/consumer_cuda")
if(NOT EXISTS "${cuda_exe}" AND EXISTS "${CONSUMER_BINARY_DIR}/${OFT_CONFIG}/consumer_cuda")
  set(cuda_exe "${CONSUMER_BINARY_DIR}/${OFT_CONFIG}/consumer_cuda")
endif()
if(EXISTS "${cuda_exe}")
  run_step("run" "${cuda_exe}")
endif()
message(STATUS "[consumer] OK")
