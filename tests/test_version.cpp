// oft's one version number (include/oft/version.hpp) against the two other places that state it:
// CMake's project(VERSION), which the top-level CMakeLists.txt reads from the header and which
// becomes the installed package's oftConfigVersion.cmake, and CHANGELOG.md's newest release entry.
// tests/CMakeLists.txt passes both in (OFT_TEST_PROJECT_VERSION, OFT_TEST_CHANGELOG).
#include <oft/version.hpp>

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <string>

#ifndef OFT_TEST_PROJECT_VERSION
#error "tests/CMakeLists.txt must define OFT_TEST_PROJECT_VERSION for test_version"
#endif
#ifndef OFT_TEST_CHANGELOG
#error "tests/CMakeLists.txt must define OFT_TEST_CHANGELOG for test_version"
#endif

namespace {

std::string numbers_string() {
  const oft::Version v = oft::version();
  return std::to_string(v.major) + "." + std::to_string(v.minor) + "." + std::to_string(v.patch);
}

TEST(Version, HeaderAgreesWithItself) {
  EXPECT_EQ(std::string(oft::version_string()), OFT_VERSION_STRING);
  EXPECT_EQ(numbers_string(), OFT_VERSION_STRING);
  EXPECT_EQ(OFT_VERSION, OFT_VERSION_MAJOR * 10000 + OFT_VERSION_MINOR * 100 + OFT_VERSION_PATCH);
  static_assert(oft::version().major == OFT_VERSION_MAJOR, "constexpr accessor");
}

TEST(Version, HeaderAgreesWithCMakeProjectVersion) {
  EXPECT_EQ(std::string(OFT_TEST_PROJECT_VERSION), OFT_VERSION_STRING)
      << "CMake's PROJECT_VERSION differs from include/oft/version.hpp";
}

// Keep a Changelog: "## [Unreleased]" may stand first; the newest release is the first
// "## [X.Y.Z] - YYYY-MM-DD" heading.
TEST(Version, HeaderAgreesWithChangelogTopEntry) {
  std::ifstream in(OFT_TEST_CHANGELOG);
  ASSERT_TRUE(in) << "cannot open " << OFT_TEST_CHANGELOG;
  const std::regex release(R"(^## \[([0-9]+\.[0-9]+\.[0-9]+)\] - [0-9]{4}-[0-9]{2}-[0-9]{2}\s*$)");
  std::string line;
  std::string top;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, release)) {
      top = m[1];
      break;
    }
  }
  ASSERT_FALSE(top.empty()) << OFT_TEST_CHANGELOG
                            << " has no release heading '## [X.Y.Z] - YYYY-MM-DD'";
  EXPECT_EQ(top, OFT_VERSION_STRING)
      << "CHANGELOG.md's newest release differs from include/oft/version.hpp";
}

}  // namespace
