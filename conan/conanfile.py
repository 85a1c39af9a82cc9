"""Conan 2 recipe for oft, the header-only orthogonal finetuning library.

The recipe lives in conan/ beside the sources it packages (one directory up): `conan create conan/`
exports include/, cmake/, CMakeLists.txt and CHANGELOG.md from this checkout, so it builds offline
from the local tree. The version is read from include/oft/version.hpp, the one place it is written.

The package is what oft's own `cmake --install` produces (the headers and oft's CMake package
files), and consumers use oft's own oftConfig.cmake: `find_package(oft 0.2 REQUIRED)` and
`target_link_libraries(... oft::oft)`, exactly as with a plain CMake install. That config finds
Eigen itself (find_dependency(Eigen3 3.4)), which is what lets the choice below work:

- with_system_eigen=True (default): no Conan requirement on Eigen; Eigen 3.4 must be installed on
  the system where CMake finds it (Debian: libeigen3-dev). This is the default because the
  project's machines and CI are offline from Conan Center, and because Eigen is header-only, so a
  system copy costs nothing at link time.
- with_system_eigen=False: requires eigen/3.4.0 from a Conan remote; Conan's CMakeDeps then
  provides the Eigen3::Eigen target that oft's config finds.

The package content is the same for every option and setting (headers and CMake files only), so
package_id() clears them all: one binary package serves every configuration.
"""

import os
import re

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load

required_conan_version = ">=2.0"


class OftConan(ConanFile):
    name = "oft"
    description = ("Header-only C++17 library of orthogonal finetuning (OFT, OFTv2) "
                   "parameterizations with exact gradients, over Eigen")
    # The repository has no LICENSE file yet (docs/install.md); state none rather than guess one.
    license = "LicenseRef-unspecified"
    topics = ("orthogonal-finetuning", "oft", "peft", "eigen", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    options = {"with_system_eigen": [True, False]}
    default_options = {"with_system_eigen": True}
    no_copy_source = True

    def _source_root(self):
        return os.path.join(self.recipe_folder, os.pardir)

    def set_version(self):
        if self.version:
            return
        header = load(self, os.path.join(self._source_root(), "include", "oft", "version.hpp"))
        parts = []
        for part in ("MAJOR", "MINOR", "PATCH"):
            m = re.search(r"^#define OFT_VERSION_%s +([0-9]+) *$" % part, header, re.MULTILINE)
            if not m:
                raise ConanException("oft: no '#define OFT_VERSION_%s <number>' in "
                                     "include/oft/version.hpp" % part)
            parts.append(m.group(1))
        self.version = ".".join(parts)

    def export_sources(self):
        root = self._source_root()
        copy(self, "CMakeLists.txt", root, self.export_sources_folder)
        copy(self, "CHANGELOG.md", root, self.export_sources_folder)
        copy(self, "LICENSE*", root, self.export_sources_folder)
        copy(self, "*", os.path.join(root, "cmake"), os.path.join(self.export_sources_folder, "cmake"))
        copy(self, "*", os.path.join(root, "include"),
             os.path.join(self.export_sources_folder, "include"))

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        if not self.options.with_system_eigen:
            self.requires("eigen/3.4.0")

    def package_id(self):
        self.info.clear()

    def generate(self):
        tc = CMakeToolchain(self)
        # Only the library and its install rules: no tests, examples, benchmarks, tool or fuzzers.
        for var in ("OFT_BUILD_TESTS", "OFT_BUILD_BENCH", "OFT_BUILD_EXAMPLES", "OFT_BUILD_TOOLS",
                    "OFT_BUILD_FUZZERS"):
            tc.cache_variables[var] = False
        # Fixed content whatever the build machine has, so that one package_id is honest:
        # oft::oft (with OpenMP when the compiler has it, as a plain CMake install), without the
        # optional oft::blas, oft::io and oft::cuda targets (their headers are installed all the
        # same; see docs/install.md).
        tc.cache_variables["OFT_USE_BLAS"] = False
        tc.cache_variables["OFT_USE_IO"] = False
        tc.cache_variables["OFT_ENABLE_CUDA"] = "OFF"
        tc.cache_variables["OFT_INSTALL_CMAKEDIR"] = "lib/cmake/oft"
        tc.generate()
        CMakeDeps(self).generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()

    def package(self):
        cmake = CMake(self)
        cmake.install()
        # None yet: the repository has no LICENSE file (see `license` above).
        copy(self, "LICENSE*", self.source_folder, os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        # Consumers use oft's own oftConfig.cmake (which finds Eigen and OpenMP itself), not a
        # config generated by CMakeDeps.
        self.cpp_info.set_property("cmake_find_mode", "none")
        self.cpp_info.builddirs = [os.path.join("lib", "cmake", "oft")]
