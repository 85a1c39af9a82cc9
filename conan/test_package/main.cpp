// The Conan test package: oft's headers from the created package, one rotation computed and
// checked to be orthogonal, and the headers' version against the CMake package's.
#include <oft/oft.hpp>

#include <Eigen/Dense>

#include <cstdio>
#include <cstring>

int main() {
  if (std::strcmp(oft::version_string(), OFT_EXPECTED_VERSION) != 0) {
    std::fprintf(stderr, "oft_conan_test: headers say %s, the CMake package %s\n",
                 oft::version_string(), OFT_EXPECTED_VERSION);
    return 1;
  }
  // One 4 x 4 generator (6 packed numbers) through exact Cayley: R^T R must be I.
  const double theta[6] = {0.1, -0.2, 0.3, 0.05, -0.15, 0.25};
  const Eigen::MatrixXd r = oft::cayley(oft::skew(theta, 4)).eval();
  const double error = (r.transpose() * r - Eigen::MatrixXd::Identity(4, 4)).norm();
  if (!(error < 1e-12)) {
    std::fprintf(stderr, "oft_conan_test: ||R^T R - I|| = %g\n", error);
    return 1;
  }
  std::printf("oft_conan_test: oft %s, ||R^T R - I|| = %.1e: ok\n", oft::version_string(), error);
  return 0;
}
