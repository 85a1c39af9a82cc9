// Reading files written by the reference implementation (tests/io/fixtures, made by
// make_fixtures.py with the `safetensors` Python package): every dtype, metadata, an empty
// tensor and a scalar, read in place; typed access and its refusals; I/O errors.

#include <gtest/gtest.h>

#include <oft/io/safetensors.hpp>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "io_test_support.hpp"

namespace {

using namespace oft_io_test;
using oft::io::Dtype;
using oft::io::SafetensorsFile;

template <class T>
std::vector<T> values(const SafetensorsFile& file, const std::string& name) {
  const auto span = file.tensor(name).as<T>();
  return std::vector<T>(span.begin(), span.end());
}

std::vector<std::uint16_t> bits(const oft::io::ConstSpan<oft::float16>& span) {
  std::vector<std::uint16_t> out;
  for (const auto h : span) out.push_back(oft::bits_of(h));
  return out;
}

class ReferenceFile : public ::testing::Test {
 protected:
  SafetensorsFile file_ = SafetensorsFile::open(fixture("reference_all_dtypes.safetensors"));
};

TEST_F(ReferenceFile, NamesMetadataAndLayout) {
  EXPECT_EQ(file_.tensor_names(), (std::vector<std::string>{"bf16", "bool", "empty", "f16", "f32", "f64", "i16", "i32",
                                                            "i64", "i8", "scalar", "u16", "u32", "u64", "u8"}));
  EXPECT_EQ(file_.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  // The reference writer's order: widest dtype first (enum order, descending), then name.
  std::vector<std::string> order;
  for (const auto& info : file_.tensors()) order.push_back(info.name);
  EXPECT_EQ(order, (std::vector<std::string>{"u64", "i64", "f64", "scalar", "empty", "f32", "u32", "i32", "bf16", "f16",
                                             "u16", "i16", "i8", "u8", "bool"}));
  EXPECT_EQ(file_.header().header_bytes % 8, 0u);
}

TEST_F(ReferenceFile, FloatingPointValues) {
  const auto f64 = file_.tensor("f64");
  EXPECT_EQ(f64.dtype, Dtype::F64);
  EXPECT_EQ(f64.shape, (std::vector<std::uint64_t>{2, 3}));
  const std::vector<double> expected64{0.5, -1.25, 3.0, 1e300, -0.0, std::ldexp(1.0, -1074)};
  const auto got64 = values<double>(file_, "f64");
  ASSERT_EQ(got64.size(), expected64.size());
  for (std::size_t i = 0; i < got64.size(); ++i) EXPECT_EQ(std::memcmp(&got64[i], &expected64[i], 8), 0) << i;

  EXPECT_EQ(file_.tensor("f32").shape, (std::vector<std::uint64_t>{3, 2}));
  EXPECT_EQ(values<float>(file_, "f32"),
            (std::vector<float>{1.5f, -2.0f, 3.25f, 1e-45f, std::numeric_limits<float>::max(), -7.0f}));

  // numpy's float16: 1, -2.5, 65504, 2^-24, -inf, 1/3 -> 0x3555.
  EXPECT_EQ(bits(file_.tensor("f16").as<oft::float16>()),
            (std::vector<std::uint16_t>{0x3c00, 0xc100, 0x7bff, 0x0001, 0xfc00, 0x3555}));
  EXPECT_EQ(file_.tensor("f16").to_floats(),
            (std::vector<float>{1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24), -std::numeric_limits<float>::infinity(),
                                0.333251953125f}));
  // ml_dtypes' bfloat16: 1, -2.5, 3e38 -> 0x7f62 (2.9975e38), 1/3 -> 0x3eab.
  const auto bf16 = file_.tensor("bf16").as<oft::bfloat16>();
  ASSERT_EQ(bf16.size(), 4u);
  EXPECT_EQ(oft::bits_of(bf16[0]), 0x3f80);
  EXPECT_EQ(oft::bits_of(bf16[1]), 0xc020);
  EXPECT_EQ(oft::bits_of(bf16[2]), 0x7f62);
  EXPECT_EQ(oft::bits_of(bf16[3]), 0x3eab);
  EXPECT_EQ(file_.tensor("bf16").to_floats()[3], 0.333984375f);
}

TEST_F(ReferenceFile, IntegerValues) {
  EXPECT_EQ(values<std::int64_t>(file_, "i64"),
            (std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()}));
  EXPECT_EQ(values<std::uint64_t>(file_, "u64"), (std::vector<std::uint64_t>{std::numeric_limits<std::uint64_t>::max(), 7}));
  EXPECT_EQ(file_.tensor("i32").shape, (std::vector<std::uint64_t>{2, 2}));
  EXPECT_EQ(values<std::int32_t>(file_, "i32"), (std::vector<std::int32_t>{-2147483647 - 1, 2147483647, 0, -5}));
  EXPECT_EQ(values<std::uint32_t>(file_, "u32"), (std::vector<std::uint32_t>{4294967295u, 1}));
  EXPECT_EQ(values<std::int16_t>(file_, "i16"), (std::vector<std::int16_t>{-32768, 32767, -3}));
  EXPECT_EQ(values<std::uint16_t>(file_, "u16"), (std::vector<std::uint16_t>{65535, 2}));
  EXPECT_EQ(values<std::int8_t>(file_, "i8"), (std::vector<std::int8_t>{-128, 127, -1}));
  EXPECT_EQ(values<std::uint8_t>(file_, "u8"), (std::vector<std::uint8_t>{0, 255, 17, 42}));
  // BOOL has no typed view (a byte other than 0/1 would be undefined as bool): raw bytes.
  const auto flags = file_.tensor("bool");
  EXPECT_EQ(flags.dtype, Dtype::BOOL);
  ASSERT_EQ(flags.bytes, 3u);
  EXPECT_EQ(std::to_integer<int>(flags.data[0]), 1);
  EXPECT_EQ(std::to_integer<int>(flags.data[1]), 0);
  EXPECT_EQ(std::to_integer<int>(flags.data[2]), 1);
}

TEST_F(ReferenceFile, EmptyTensorAndScalar) {
  const auto empty = file_.tensor("empty");
  EXPECT_EQ(empty.shape, (std::vector<std::uint64_t>{0, 3}));
  EXPECT_EQ(empty.numel(), 0u);
  EXPECT_EQ(empty.bytes, 0u);
  EXPECT_TRUE(empty.as<float>().empty());
  EXPECT_TRUE(empty.to_floats().empty());
  const auto scalar = file_.tensor("scalar");
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_EQ(scalar.numel(), 1u);
  EXPECT_EQ(values<double>(file_, "scalar"), std::vector<double>{3.25});
}

TEST_F(ReferenceFile, ViewsPointIntoTheMappingWithoutCopies) {
  const auto* base = file_.mapping().data();
  for (const auto& info : file_.tensors()) {
    const auto view = file_.view(info);
    EXPECT_EQ(view.data, base + 8 + file_.header().header_bytes + info.begin) << info.name;
    EXPECT_EQ(view.bytes, info.end - info.begin) << info.name;
  }
  const auto f32 = file_.tensor("f32");
  EXPECT_EQ(static_cast<const void*>(f32.as<float>().data()), static_cast<const void*>(f32.data));
}

TEST_F(ReferenceFile, ViewsOutliveAMoveOfTheFile) {
  const auto f64 = file_.tensor("f64");
  SafetensorsFile moved = std::move(file_);
  EXPECT_EQ(f64.as<double>()[0], 0.5);
  EXPECT_EQ(moved.tensor("f64").data, f64.data);
}

TEST_F(ReferenceFile, TypedAccessRefusesAnotherDtype) {
  try {
    (void)file_.tensor("f32").as<double>();
    ADD_FAILURE() << "as<double>() on F32 was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_EQ(std::string(error.what()), "oft: " + fixture("reference_all_dtypes.safetensors").string() +
                                             ": tensor 'f32' is F32, but as<double>() reads F64");
  }
  // F16, BF16 and U16 are all 16-bit words, and none reads as another.
  EXPECT_THROW((void)file_.tensor("f16").as<std::uint16_t>(), std::invalid_argument);
  EXPECT_THROW((void)file_.tensor("f16").as<oft::bfloat16>(), std::invalid_argument);
  EXPECT_THROW((void)file_.tensor("bf16").copy_as<oft::float16>(), std::invalid_argument);
  EXPECT_THROW((void)file_.tensor("u8").as<std::int8_t>(), std::invalid_argument);
  try {
    (void)file_.tensor("i32").to_floats();
    ADD_FAILURE() << "to_floats() on I32 was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_CONTAINS(std::string(error.what()), "tensor 'i32' is I32; to_floats() converts F32, F16 and BF16 only");
  }
  EXPECT_THROW((void)file_.tensor("f64").to_floats(), std::invalid_argument);  // would round
}

TEST_F(ReferenceFile, UnknownTensorName) {
  EXPECT_FALSE(file_.contains("nope"));
  EXPECT_EQ(file_.find("nope"), nullptr);
  try {
    (void)file_.tensor("nope");
    ADD_FAILURE() << "an unknown tensor was found";
  } catch (const std::out_of_range& error) {
    EXPECT_EQ(std::string(error.what()), "oft: " + fixture("reference_all_dtypes.safetensors").string() +
                                             ": no tensor 'nope' (the file holds 15 tensors)");
  }
}

TEST_F(ReferenceFile, ViewOfAForeignEntryIsRefused) {
  oft::io::TensorInfo foreign = file_.tensors()[0];
  EXPECT_THROW((void)file_.view(foreign), std::invalid_argument);
  EXPECT_NO_THROW((void)file_.view(file_.tensors()[0]));
}

TEST(Reader, MisalignedTensorsAreRefusedInPlaceAndCopied) {
  // An unpadded 55-byte header (with one space) puts the data section at offset 63: F32 there
  // is misaligned.
  ScratchDir dir;
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} )";
  ASSERT_EQ((8 + header.size()) % 4, 3u);
  write_bytes(dir / "odd.safetensors", forge(header, bytes_of(std::vector<float>{1.5f, -3.0f})));
  const auto file = SafetensorsFile::open(dir / "odd.safetensors");
  const auto a = file.tensor("a");
  try {
    (void)a.as<float>();
    ADD_FAILURE() << "a misaligned typed view was handed out";
  } catch (const std::invalid_argument& error) {
    EXPECT_CONTAINS(std::string(error.what()), "tensor 'a' (F32) starts at an address that is not 4-byte aligned");
    EXPECT_CONTAINS(std::string(error.what()), "use copy_as<T>()");
  }
  EXPECT_EQ(a.copy_as<float>(), (std::vector<float>{1.5f, -3.0f}));
  EXPECT_EQ(a.to_floats(), (std::vector<float>{1.5f, -3.0f}));
}

TEST(Reader, MissingFileNamesThePathAndErrno) {
  const fs::path path = fixture("no_such_file.safetensors");
  try {
    (void)SafetensorsFile::open(path);
    ADD_FAILURE() << "a missing file was opened";
  } catch (const std::system_error& error) {
    EXPECT_EQ(error.code().value(), ENOENT);
    EXPECT_CONTAINS(std::string(error.what()), "oft: cannot open '" + path.string() + "'");
    EXPECT_CONTAINS(std::string(error.what()), "No such file or directory");
  }
}

TEST(Reader, DirectoryIsNotAFile) {
  try {
    (void)SafetensorsFile::open(fixture(""));
    ADD_FAILURE() << "a directory was opened";
  } catch (const std::system_error& error) {
    EXPECT_EQ(error.code().value(), EISDIR);
    EXPECT_CONTAINS(std::string(error.what()), "oft: cannot read '");
  }
}

TEST(Reader, DtypeNamesAndWidthsFollowTheReference) {
  EXPECT_EQ(oft::io::dtype_name(Dtype::BF16), "BF16");
  EXPECT_EQ(oft::io::dtype_bits(Dtype::F6_E2M3), 6u);
  EXPECT_EQ(oft::io::dtype_bits(Dtype::C64), 64u);
  EXPECT_EQ(oft::io::parse_dtype("F8_E4M3"), Dtype::F8_E4M3);
  EXPECT_FALSE(oft::io::parse_dtype("bf16").has_value());
  for (const auto& entry : oft::io::detail::kDtypes) EXPECT_EQ(oft::io::parse_dtype(entry.name), entry.dtype);
}

}  // namespace
