#pragma once
/// \file version.hpp
/// oft's version, the one place it is written. CMake's `project(oft VERSION ...)` (and so the
/// installed package's oftConfigVersion.cmake), the Python package's `oft.__version__` and
/// `oft --version` all read it from here; CHANGELOG.md's newest release entry must name the same
/// version (tests/test_version.cpp checks all of this). The numbers follow semantic versioning;
/// while the major version is 0, a minor release may change the API (CHANGELOG.md says how).
///
/// The three `#define OFT_VERSION_*` lines and the string below are read by tools with a regular
/// expression: keep each on one line, in this form.

#define OFT_VERSION_MAJOR 0
#define OFT_VERSION_MINOR 2
#define OFT_VERSION_PATCH 0
#define OFT_VERSION_STRING "0.2.0"

/// One integer for preprocessor comparisons: `#if OFT_VERSION >= 200` (0.2.0) is
/// MAJOR * 10000 + MINOR * 100 + PATCH.
#define OFT_VERSION (OFT_VERSION_MAJOR * 10000 + OFT_VERSION_MINOR * 100 + OFT_VERSION_PATCH)

namespace oft {

/// The version of the oft headers this translation unit was compiled against.
struct Version {
  int major;
  int minor;
  int patch;
};

/// The version as numbers, e.g. {0, 2, 0}.
constexpr Version version() noexcept {
  return Version{OFT_VERSION_MAJOR, OFT_VERSION_MINOR, OFT_VERSION_PATCH};
}

/// The version as "MAJOR.MINOR.PATCH", e.g. "0.2.0" (a string literal: static storage).
constexpr const char* version_string() noexcept { return OFT_VERSION_STRING; }

namespace detail {
// Whether s, from position i on, is the decimal number n followed by `end` (compile time; used
// below so that the string literal cannot drift from the three numbers).
constexpr bool version_part_is(const char* s, int& i, int n, char end) noexcept {
  int value = 0;
  int digits = 0;
  while (s[i] >= '0' && s[i] <= '9') {
    value = value * 10 + (s[i] - '0');
    ++i;
    ++digits;
  }
  if (digits == 0 || value != n || s[i] != end) return false;
  if (end != '\0') ++i;
  return true;
}

constexpr bool version_string_matches(const char* s) noexcept {
  int i = 0;
  return version_part_is(s, i, OFT_VERSION_MAJOR, '.') &&
         version_part_is(s, i, OFT_VERSION_MINOR, '.') &&
         version_part_is(s, i, OFT_VERSION_PATCH, '\0');
}
}  // namespace detail

static_assert(detail::version_string_matches(OFT_VERSION_STRING),
              "oft/version.hpp: OFT_VERSION_STRING must be "
              "\"OFT_VERSION_MAJOR.OFT_VERSION_MINOR.OFT_VERSION_PATCH\"");

}  // namespace oft
