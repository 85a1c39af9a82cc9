# vcpkg port of oft, used as an overlay port from an oft checkout:
#   vcpkg install oft --overlay-ports=<checkout>/ports
# It builds the checkout this file sits in (ports/oft/ -> ../..), not a download, so the port and
# the sources always come from the same commit. A registry that publishes oft would replace the
# SOURCE_PATH lines with vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO ... REF v${VERSION}
# SHA512 ...) and keep the rest.
set(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../..")
get_filename_component(SOURCE_PATH "${SOURCE_PATH}" ABSOLUTE)
if(NOT EXISTS "${SOURCE_PATH}/include/oft/version.hpp")
  message(FATAL_ERROR "oft port: ${SOURCE_PATH} is not an oft checkout (no include/oft/version.hpp)")
endif()

# The manifest's version (vcpkg passes it as VERSION) must be the one the headers carry.
file(STRINGS "${SOURCE_PATH}/include/oft/version.hpp" _oft_version_line
     REGEX "^#define OFT_VERSION_STRING \"[0-9]+\\.[0-9]+\\.[0-9]+\"$")
string(REGEX REPLACE "^#define OFT_VERSION_STRING \"([0-9.]+)\"$" "\\1" _oft_header_version
       "${_oft_version_line}")
if(NOT _oft_header_version STREQUAL VERSION)
  message(FATAL_ERROR "oft port: vcpkg.json says ${VERSION}, include/oft/version.hpp says "
                      "'${_oft_header_version}'")
endif()

# Header-only: one configuration is enough.
set(VCPKG_BUILD_TYPE release)

# Only the library and its install rules. The optional oft::blas, oft::io and oft::cuda targets
# are left out (their headers are installed all the same; docs/install.md), so the port needs
# only Eigen. OpenMP is linked when the compiler has it, as in a plain CMake install.
vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    -DOFT_BUILD_TESTS=OFF
    -DOFT_BUILD_BENCH=OFF
    -DOFT_BUILD_EXAMPLES=OFF
    -DOFT_BUILD_TOOLS=OFF
    -DOFT_BUILD_FUZZERS=OFF
    -DOFT_USE_BLAS=OFF
    -DOFT_USE_IO=OFF
    -DOFT_ENABLE_CUDA=OFF
    -DOFT_INSTALL_CMAKEDIR=share/oft
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME oft CONFIG_PATH share/oft)

# Nothing architecture-specific is installed.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug" "${CURRENT_PACKAGES_DIR}/lib")

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
# oft has no LICENSE file yet; vcpkg requires a copyright file, so this one says so plainly.
if(EXISTS "${SOURCE_PATH}/LICENSE")
  vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
else()
  file(WRITE "${CURRENT_PACKAGES_DIR}/share/${PORT}/copyright"
       "oft ${VERSION}: the source tree carries no license file at this version.\n")
endif()
