# Runs ports/oft/portfile.cmake without vcpkg (cmake -P), for scripts/vcpkg_port_check.sh.
#
# vcpkg is not on PyPI or in Debian 12, and the machines here cannot download it, so the four
# vcpkg helper functions the portfile calls are defined below by what they do for a header-only
# CMake project: vcpkg_cmake_configure / vcpkg_cmake_install (the vcpkg-cmake port) configure the
# sources with CMAKE_INSTALL_PREFIX=CURRENT_PACKAGES_DIR and build the install target,
# vcpkg_cmake_config_fixup (vcpkg-cmake-config) checks the config files are where it would leave
# them and hold no absolute staging path, vcpkg_install_copyright copies the file. vcpkg's own
# toolchain, Ninja, triplet flags and its Eigen port are NOT used: Debian's Eigen is.
#
# Inputs (-D): PORT_DIR (ports/oft), WORK_DIR (scratch root, emptied first).
cmake_minimum_required(VERSION 3.25)
foreach(var PORT_DIR WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "vcpkg_port_simulate: -D${var}=... is required")
  endif()
endforeach()

file(READ "${PORT_DIR}/vcpkg.json" _manifest)
string(JSON PORT GET "${_manifest}" name)
string(JSON VERSION GET "${_manifest}" version)
set(TARGET_TRIPLET x64-linux)
set(CURRENT_PACKAGES_DIR "${WORK_DIR}/packages/${PORT}_${TARGET_TRIPLET}")
set(CURRENT_BUILDTREES_DIR "${WORK_DIR}/buildtrees/${PORT}")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${CURRENT_PACKAGES_DIR}" "${CURRENT_BUILDTREES_DIR}")

function(_sim_run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message("${out}")
    message(FATAL_ERROR "vcpkg_port_simulate: ${what} failed (${rc})")
  endif()
endfunction()

function(vcpkg_cmake_configure)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "SOURCE_PATH" "OPTIONS;OPTIONS_RELEASE;OPTIONS_DEBUG")
  if(NOT VCPKG_BUILD_TYPE STREQUAL "release")
    message(FATAL_ERROR "vcpkg_port_simulate: a header-only port should set VCPKG_BUILD_TYPE release")
  endif()
  message(STATUS "vcpkg_cmake_configure (simulated): ${arg_SOURCE_PATH}")
  _sim_run("configure" "${CMAKE_COMMAND}" -S "${arg_SOURCE_PATH}"
           -B "${CURRENT_BUILDTREES_DIR}/${TARGET_TRIPLET}-rel" -DCMAKE_BUILD_TYPE=Release
           "-DCMAKE_INSTALL_PREFIX=${CURRENT_PACKAGES_DIR}" ${arg_OPTIONS} ${arg_OPTIONS_RELEASE})
endfunction()

function(vcpkg_cmake_install)
  message(STATUS "vcpkg_cmake_install (simulated)")
  _sim_run("install" "${CMAKE_COMMAND}" --build "${CURRENT_BUILDTREES_DIR}/${TARGET_TRIPLET}-rel"
           --target install -j 1)
endfunction()

function(vcpkg_cmake_config_fixup)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "PACKAGE_NAME;CONFIG_PATH" "")
  message(STATUS "vcpkg_cmake_config_fixup (simulated): ${arg_CONFIG_PATH}")
  # vcpkg wants the config in share/<port>; a CONFIG_PATH of share/<port> is left in place.
  if(NOT arg_CONFIG_PATH STREQUAL "share/${arg_PACKAGE_NAME}")
    message(FATAL_ERROR "vcpkg_port_simulate: the simulation only covers CONFIG_PATH "
                        "share/${arg_PACKAGE_NAME}, not ${arg_CONFIG_PATH}")
  endif()
  set(dir "${CURRENT_PACKAGES_DIR}/${arg_CONFIG_PATH}")
  if(NOT EXISTS "${dir}/${arg_PACKAGE_NAME}Config.cmake")
    message(FATAL_ERROR "vcpkg_port_simulate: no ${arg_CONFIG_PATH}/${arg_PACKAGE_NAME}Config.cmake")
  endif()
  file(GLOB configs "${dir}/*.cmake")
  foreach(f IN LISTS configs)
    file(READ "${f}" text)
    string(FIND "${text}" "${CURRENT_PACKAGES_DIR}" pos)
    if(NOT pos EQUAL -1)
      message(FATAL_ERROR "vcpkg_port_simulate: ${f} holds the absolute staging path")
    endif()
  endforeach()
endfunction()

function(vcpkg_install_copyright)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "" "FILE_LIST")
  file(MAKE_DIRECTORY "${CURRENT_PACKAGES_DIR}/share/${PORT}")
  file(COPY_FILE "${arg_FILE_LIST}" "${CURRENT_PACKAGES_DIR}/share/${PORT}/copyright")
endfunction()

include("${PORT_DIR}/portfile.cmake")

# Some of vcpkg's post-build checks that apply to a header-only port.
foreach(required "include/oft/oft.hpp" "include/oft/version.hpp" "share/${PORT}/copyright"
                 "share/${PORT}/usage" "share/${PORT}/${PORT}Config.cmake"
                 "share/${PORT}/${PORT}ConfigVersion.cmake")
  if(NOT EXISTS "${CURRENT_PACKAGES_DIR}/${required}")
    message(FATAL_ERROR "vcpkg_port_simulate: the port did not install ${required}")
  endif()
endforeach()
foreach(forbidden "debug" "lib" "bin")
  if(EXISTS "${CURRENT_PACKAGES_DIR}/${forbidden}")
    message(FATAL_ERROR "vcpkg_port_simulate: a header-only port must not install ${forbidden}/")
  endif()
endforeach()
message(STATUS "vcpkg_port_simulate: ${PORT} ${VERSION} staged in ${CURRENT_PACKAGES_DIR}")
