// Every validation rule of the safetensors reader, each with a file forged to break it alone
// (forged_files.hpp): the file must be refused with oft::io::format_error whose message names
// the file, the tensor and the values at fault. Well-formed corner cases (empty tensors,
// scalars, offsets listed out of order, padding, null metadata) must be accepted.

#include <gtest/gtest.h>

#include <oft/io/safetensors.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "forged_files.hpp"
#include "io_test_support.hpp"

namespace {

using namespace oft_io_test;
using oft::io::format_error;
using oft::io::SafetensorsFile;

static_assert(std::is_base_of_v<std::invalid_argument, format_error>,
              "a malformed file is an invalid argument, as everywhere in oft");

class Refused : public ::testing::TestWithParam<ForgedFile> {};

TEST_P(Refused, WithAMessageNamingFileTensorAndValues) {
  const ForgedFile& forged = GetParam();
  ScratchDir dir;
  const fs::path path = dir / "model.safetensors";
  write_bytes(path, forged.bytes);
  try {
    (void)SafetensorsFile::open(path);
    ADD_FAILURE() << "the file was accepted";
  } catch (const format_error& error) {
    const std::string what = error.what();
    EXPECT_STARTS_WITH(what, "oft: " + path.string() + ": ");
    for (const std::string& part : forged.expected) EXPECT_CONTAINS(what, part);
  }
}

INSTANTIATE_TEST_SUITE_P(Forged, Refused, ::testing::ValuesIn(forged_files()),
                         [](const ::testing::TestParamInfo<ForgedFile>& info) { return info.param.name; });

TEST(Refused, SizeMismatchMessageInFull) {
  ScratchDir dir;
  const fs::path path = dir / "model.safetensors";
  write_bytes(path, forge(R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", f32_bytes(3)));
  try {
    (void)SafetensorsFile::open(path);
    ADD_FAILURE() << "the file was accepted";
  } catch (const format_error& error) {
    EXPECT_EQ(std::string(error.what()),
              "oft: " + path.string() +
                  ": tensor 'a.weight' data_offsets [0, 12) hold 12 bytes, but shape [2, 2] of F32 needs 16");
  }
}

class Accepted : public ::testing::Test {
 protected:
  SafetensorsFile open(const std::string& bytes) {
    const fs::path path = dir_ / "ok.safetensors";
    write_bytes(path, bytes);
    return SafetensorsFile::open(path);
  }
  ScratchDir dir_;
};

TEST_F(Accepted, EmptyHeader) {
  const auto file = open(forge("{}"));
  EXPECT_EQ(file.size(), 0u);
  EXPECT_TRUE(file.metadata().empty());
}

TEST_F(Accepted, PaddingWithSpaces) {
  const auto file = open(forge("{}      "));
  EXPECT_EQ(file.size(), 0u);
  EXPECT_EQ(file.header().header_bytes, 8u);
}

TEST_F(Accepted, NullMetadataIsNoMetadata) {
  // The reference reads `__metadata__` as an Option, so null is accepted there: accept it too.
  const auto file = open(forge(R"({"__metadata__":null})"));
  EXPECT_TRUE(file.metadata().empty());
}

TEST_F(Accepted, OffsetsListedOutOfOrder) {
  // JSON order (here by name) need not be data order: only the tiling matters.
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const auto file = open(forge(header, bytes_of(std::vector<float>{1.0f, 2.0f})));
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "b");
  EXPECT_EQ(file.tensor("a").to_floats(), std::vector<float>{2.0f});
  EXPECT_EQ(file.tensor("b").to_floats(), std::vector<float>{1.0f});
}

TEST_F(Accepted, EmptyTensorsMayShareAnOffset) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("c":{"dtype":"I8","shape":[3,0],"data_offsets":[8,8]},"d":{"dtype":"F64","shape":[0],"data_offsets":[0,0]}})";
  const auto file = open(forge(header, f32_bytes(2)));
  EXPECT_EQ(file.size(), 4u);
  EXPECT_TRUE(file.tensor("c").as<std::int8_t>().empty());
  EXPECT_EQ(file.tensor("c").numel(), 0u);
  EXPECT_TRUE(file.tensor("d").as<double>().empty());
}

TEST_F(Accepted, ZeroBeforeHugeDimensionsIsEmpty) {
  const auto file = open(forge(one_tensor(R"({"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]})")));
  EXPECT_EQ(file.tensor("a").bytes, 0u);
  EXPECT_EQ(file.tensor("a").numel(), 0u);
}

TEST_F(Accepted, SubByteDtypeFillingWholeBytes) {
  const auto file = open(forge(one_tensor(R"({"dtype":"F4","shape":[4],"data_offsets":[0,2]})"), "xy"));
  EXPECT_EQ(file.tensor("a").bytes, 2u);
  EXPECT_EQ(file.tensor("a").dtype, oft::io::Dtype::F4);
}

TEST_F(Accepted, Scalar) {
  const auto file = open(forge(padded(one_tensor(R"({"dtype":"F64","shape":[],"data_offsets":[0,8]})")),
                               bytes_of(std::vector<double>{-0.5})));
  const auto scalar = file.tensor("a");
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_EQ(scalar.numel(), 1u);
  ASSERT_EQ(scalar.as<double>().size(), 1u);
  EXPECT_EQ(scalar.as<double>()[0], -0.5);
}

TEST_F(Accepted, UnicodeNamesAndMetadata) {
  const std::string header = padded(R"({"__metadata__":{"note":"\u00e9t\u00e9 \"q\""},"αβ.weight":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})");
  const auto file = open(forge(header, "\x07"));
  EXPECT_EQ(file.metadata().at("note"), "\xc3\xa9t\xc3\xa9 \"q\"");
  EXPECT_EQ(file.tensor("\xce\xb1\xce\xb2.weight").as<std::uint8_t>()[0], 7u);
}

}  // namespace
