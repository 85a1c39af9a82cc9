"""Test package for the oft recipe: builds a small program against the created package with
oft's own find_package(oft) config and runs it."""

import os

from conan import ConanFile
from conan.tools.build import can_run
from conan.tools.cmake import CMake, cmake_layout


class OftTestConan(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeDeps", "CMakeToolchain"

    def requirements(self):
        self.requires(self.tested_reference_str)

    def layout(self):
        cmake_layout(self)

    def build(self):
        cmake = CMake(self)
        # The version Conan packaged, so the program can compare it with the headers' own.
        cmake.configure(variables={"OFT_EXPECTED_VERSION": str(self.dependencies["oft"].ref.version)})
        cmake.build()

    def test(self):
        if can_run(self):
            self.run(os.path.join(self.cpp.build.bindir, "oft_conan_test"), env="conanrun")
