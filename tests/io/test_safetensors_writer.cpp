// SafetensorsWriter: every dtype round-trips bit for bit; the layout is the reference's (a
// file rewritten from the reference fixture is byte-identical); the header is padded with
// spaces; bad entries are refused when added; write() is atomic: on any failure no file and no
// temporary file remain and an existing destination is untouched.

#include <gtest/gtest.h>

#include <oft/io/safetensors.hpp>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "io_test_support.hpp"

namespace {

using namespace oft_io_test;
using oft::io::Dtype;
using oft::io::format_error;
using oft::io::SafetensorsFile;
using oft::io::SafetensorsWriter;

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen() & 0xff);
  return s;
}

TEST(Writer, EveryDtypeRoundTripsBitForBit) {
  ScratchDir dir;
  SafetensorsWriter writer;
  std::vector<std::string> payloads;
  payloads.reserve(oft::io::detail::kDtypeCount);
  for (const auto& entry : oft::io::detail::kDtypes) {
    // 2 x 4 elements: a whole number of bytes for every width, 4- and 6-bit ones included.
    payloads.push_back(random_bytes(8 * entry.bits / 8, entry.bits * 31u + static_cast<unsigned>(entry.dtype)));
    writer.add(std::string(entry.name), entry.dtype, {2, 4}, payloads.back().data(), payloads.back().size());
  }
  writer.add_metadata("format", "pt");
  writer.write(dir / "all.safetensors");

  const auto file = SafetensorsFile::open(dir / "all.safetensors");
  ASSERT_EQ(file.size(), oft::io::detail::kDtypeCount);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  for (std::size_t i = 0; i < oft::io::detail::kDtypeCount; ++i) {
    const auto& entry = oft::io::detail::kDtypes[i];
    const auto view = file.tensor(entry.name);
    EXPECT_EQ(view.dtype, entry.dtype);
    EXPECT_EQ(view.shape, (std::vector<std::uint64_t>{2, 4}));
    ASSERT_EQ(view.bytes, payloads[i].size()) << entry.name;
    EXPECT_EQ(std::memcmp(view.data, payloads[i].data(), view.bytes), 0) << entry.name;
  }
}

TEST(Writer, TypedOverloadsAndAlignedLayout) {
  ScratchDir dir;
  const std::vector<std::int8_t> i8{-1, 2, -3};  // 3 bytes: would misalign whatever followed it
  const std::vector<double> f64{1.0, -2.0};
  const std::vector<oft::float16> f16{oft::io::to_float16(0.5f)};
  const std::vector<float> f32{1, 2, 3, 4, 5, 6};
  SafetensorsWriter writer;
  writer.add("a_i8", {3}, i8).add("b_f16", {1}, f16.data()).add("c_f64", {2}, f64).add("d_f32", {2, 3}, f32.data());
  writer.add("e_scalar", {}, f64.data());
  writer.write(dir / "typed.safetensors");
  const auto file = SafetensorsFile::open(dir / "typed.safetensors");
  // Widest first: every typed view is aligned, as<T>() never refuses a file written by oft.
  std::vector<std::string> order;
  for (const auto& info : file.tensors()) order.push_back(info.name);
  EXPECT_EQ(order, (std::vector<std::string>{"c_f64", "e_scalar", "d_f32", "b_f16", "a_i8"}));
  EXPECT_EQ(file.tensor("c_f64").as<double>()[1], -2.0);
  EXPECT_EQ(file.tensor("e_scalar").as<double>()[0], 1.0);
  EXPECT_TRUE(file.tensor("e_scalar").shape.empty());
  EXPECT_EQ(file.tensor("d_f32").copy_as<float>(), f32);
  EXPECT_EQ(file.tensor("d_f32").shape, (std::vector<std::uint64_t>{2, 3}));
  EXPECT_EQ(file.tensor("b_f16").to_floats(), std::vector<float>{0.5f});
  EXPECT_EQ(file.tensor("a_i8").as<std::int8_t>()[2], -3);
}

TEST(Writer, HeaderIsPaddedWithSpacesToAMultipleOf8) {
  for (std::size_t name_length = 1; name_length <= 8; ++name_length) {
    const std::vector<std::uint8_t> byte{9};
    SafetensorsWriter writer;
    writer.add(std::string(name_length, 'x'), {1}, byte);
    const std::string header = writer.header();
    const auto bytes = writer.serialize();
    ASSERT_EQ(header.size() % 8, 0u);
    const std::string json = "{\"" + std::string(name_length, 'x') + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    EXPECT_EQ(header.substr(0, json.size()), json);
    EXPECT_EQ(header.substr(json.size()), std::string(header.size() - json.size(), ' '));
    EXPECT_LT(header.size() - json.size(), 8u);
    ASSERT_EQ(bytes.size(), 8 + header.size() + 1);
    EXPECT_EQ(std::to_integer<std::size_t>(bytes[0]), header.size() & 0xff);
    for (std::size_t i = 1; i < 8; ++i) EXPECT_EQ(std::to_integer<int>(bytes[i]), i == 1 ? static_cast<int>(header.size() >> 8) : 0);
  }
}

TEST(Writer, RewritingTheReferenceFixtureIsByteIdentical) {
  // Same tensors, same single metadata key: oft's layout, JSON and padding are the reference's.
  const auto reference = SafetensorsFile::open(fixture("reference_all_dtypes.safetensors"));
  SafetensorsWriter writer;
  for (const auto& info : reference.tensors()) writer.add(reference.view(info));
  writer.add_metadata("format", "pt");
  const auto bytes = writer.serialize();
  const std::string expected = read_bytes(fixture("reference_all_dtypes.safetensors"));
  ASSERT_EQ(bytes.size(), expected.size());
  EXPECT_EQ(std::memcmp(bytes.data(), expected.data(), expected.size()), 0);

  ScratchDir dir;
  writer.write(dir / "copy.safetensors");
  EXPECT_EQ(read_bytes(dir / "copy.safetensors"), expected);
}

TEST(Writer, EmptyWriterWritesAnEmptyModel) {
  ScratchDir dir;
  SafetensorsWriter().write(dir / "empty.safetensors");
  EXPECT_EQ(read_bytes(dir / "empty.safetensors"), forge("{}      "));
  EXPECT_EQ(SafetensorsFile::open(dir / "empty.safetensors").size(), 0u);
}

// ----------------------------------------------------------------------------- refusals

template <class Fn>
std::string format_refusal(Fn&& fn) {
  try {
    fn();
  } catch (const format_error& error) {
    return error.what();
  }
  ADD_FAILURE() << "no format_error";
  return {};
}

TEST(Writer, RefusesBadEntriesWhenAdded) {
  const std::vector<float> four(4, 1.0f);
  SafetensorsWriter writer;
  writer.add("a", {4}, four);
  EXPECT_EQ(format_refusal([&] { writer.add("a", {4}, four); }),
            "oft: SafetensorsWriter: tensor 'a' was already added (duplicate name)");
  EXPECT_CONTAINS(format_refusal([&] { writer.add("__metadata__", {4}, four); }),
                  "the tensor name '__metadata__' is reserved");
  EXPECT_EQ(format_refusal([&] { writer.add("b", Dtype::F32, {2, 2}, four.data(), 12); }),
            "oft: SafetensorsWriter: tensor 'b' shape [2, 2] of F32 needs 16 bytes, but 12 were given");
  EXPECT_EQ(format_refusal([&] { writer.add("b", {3}, four); }),
            "oft: SafetensorsWriter: tensor 'b' shape [3] of F32 needs 12 bytes, but 16 were given");
  EXPECT_CONTAINS(format_refusal([&] { writer.add("b", Dtype::F32, {1ull << 40, 1ull << 40}, four.data(), 16); }),
                  "tensor 'b' shape [1099511627776, 1099511627776] of F32: elements x 32 bits overflows 64 bits");
  EXPECT_CONTAINS(format_refusal([&] { writer.add("b", {1ull << 40, 1ull << 40}, four.data()); }), "overflows 64 bits");
  EXPECT_CONTAINS(format_refusal([&] { writer.add("b", Dtype::F4, {3}, four.data(), 1); }),
                  "tensor 'b' shape [3] of F4 is not a whole number of bytes");
  EXPECT_CONTAINS(format_refusal([&] { writer.add("b\xff", {4}, four); }), "tensor name is not valid UTF-8");
  EXPECT_THROW(writer.add("b", Dtype::F32, {1}, nullptr, 4), std::invalid_argument);
  EXPECT_NO_THROW(writer.add("c", Dtype::F32, {0}, nullptr, 0));  // no bytes, no pointer needed
  writer.add_metadata("format", "pt");
  EXPECT_EQ(format_refusal([&] { writer.add_metadata("format", "np"); }),
            "oft: SafetensorsWriter: metadata key 'format' was already added (value 'pt')");
  EXPECT_CONTAINS(format_refusal([&] { writer.add_metadata("k", "\xc0\xaf"); }), "not valid UTF-8");
  // Nothing refused was kept.
  EXPECT_EQ(writer.size(), 2u);
  const std::string header = writer.header();
  EXPECT_EQ(header.find("\"b\""), std::string::npos);
  EXPECT_NE(header.find("\"format\":\"pt\""), std::string::npos);
}

TEST(Writer, OversizedHeaderIsRefusedBeforeAnyFileExists) {
  ScratchDir dir;
  SafetensorsWriter writer;
  writer.add_metadata("big", std::string(100'000'000, 'x'));  // {"__metadata__":{"big":"x..."}}: 100000026
  EXPECT_CONTAINS(format_refusal([&] { writer.write(dir / "big.safetensors"); }),
                  "the header would be 100000032 bytes, over the 100000000-byte limit");
  EXPECT_TRUE(dir.entries().empty());
}

// ----------------------------------------------------------------------------- atomicity

TEST(Writer, SuccessLeavesOnlyTheFileAndReplacesAnOldOne) {
  ScratchDir dir;
  write_bytes(dir / "m.safetensors", "old contents");
  const std::vector<float> v{1, 2};
  SafetensorsWriter writer;
  writer.add("v", {2}, v);
  writer.write(dir / "m.safetensors");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
  EXPECT_EQ(SafetensorsFile::open(dir / "m.safetensors").tensor("v").copy_as<float>(), v);
}

TEST(Writer, RelativePathWritesInTheCurrentDirectory) {
  // No parent path: the temporary file goes to ".", next to the destination.
  ScratchDir dir;
  const fs::path previous = fs::current_path();
  fs::current_path(dir.path());
  const std::vector<float> v{3.0f};
  SafetensorsWriter writer;
  writer.add("v", {1}, v);
  writer.write("m.safetensors");
  fs::current_path(previous);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
  EXPECT_EQ(SafetensorsFile::open(dir / "m.safetensors").tensor("v").copy_as<float>(), v);
  EXPECT_THROW(writer.write(dir.path() / ""), std::invalid_argument);  // names no file
}

TEST(Writer, FileModeFollowsTheUmask) {
  ScratchDir dir;
  const ::mode_t old = ::umask(027);
  SafetensorsWriter().write(dir / "m.safetensors");
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat((dir / "m.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);  // 0666 & ~027, not mkstemp's 0600
}

// Makes every write past `limit` bytes fail with EFBIG (RLIMIT_FSIZE, with SIGXFSZ ignored):
// a real I/O error in the middle of a write, as a full disk would give.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t limit) {
    ::getrlimit(RLIMIT_FSIZE, &old_);
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit lower = old_;
    lower.rlim_cur = limit;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &lower) == 0;
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    ::signal(SIGXFSZ, old_handler_);
  }
  bool ok() const { return ok_; }

 private:
  rlimit old_{};
  void (*old_handler_)(int) = nullptr;
  bool ok_ = false;
};

TEST(Writer, FailureMidWriteLeavesNoFileAndNoTemporary) {
  ScratchDir dir;
  const std::vector<float> big(1 << 16, 0.25f);  // 256 KiB of data
  SafetensorsWriter writer;
  writer.add("big", {big.size()}, big);
  {
    FileSizeLimit limit(64 * 1024);
    ASSERT_TRUE(limit.ok());
    try {
      writer.write(dir / "m.safetensors");
      ADD_FAILURE() << "the write went through";
    } catch (const std::system_error& error) {
      EXPECT_EQ(error.code().value(), EFBIG);
      EXPECT_CONTAINS(std::string(error.what()), "oft: cannot write '" + (dir / "m.safetensors").string() + "'");
    }
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Writer, FailureMidWriteLeavesAnExistingFileIntact) {
  ScratchDir dir;
  write_bytes(dir / "m.safetensors", "the previous model");
  const std::vector<float> big(1 << 16, 0.25f);
  SafetensorsWriter writer;
  writer.add("big", {big.size()}, big);
  {
    FileSizeLimit limit(64 * 1024);
    ASSERT_TRUE(limit.ok());
    EXPECT_THROW(writer.write(dir / "m.safetensors"), std::system_error);
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
  EXPECT_EQ(read_bytes(dir / "m.safetensors"), "the previous model");
}

TEST(Writer, MissingDirectoryIsAnErrorNamingThePath) {
  ScratchDir dir;
  try {
    SafetensorsWriter().write(dir / "no" / "m.safetensors");
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const std::system_error& error) {
    EXPECT_EQ(error.code().value(), ENOENT);
    EXPECT_CONTAINS(std::string(error.what()), (dir / "no" / "m.safetensors").string());
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Writer, DestinationThatIsADirectoryIsLeftAlone) {
  ScratchDir dir;
  fs::create_directory(dir / "m.safetensors");
  write_bytes(dir / "m.safetensors" / "inside", "x");
  EXPECT_THROW(SafetensorsWriter().write(dir / "m.safetensors"), std::system_error);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});  // no temporary left
  EXPECT_EQ(read_bytes(dir / "m.safetensors" / "inside"), "x");
}

}  // namespace

namespace {

// Deferred tensors (add_deferred + write(path, fill)), the streaming path of `oft merge`.
TEST(WriterDeferred, FileEqualsTheOneWrittenFromMemory) {
  ScratchDir dir;
  const std::vector<float> a{1.5f, -2.0f, 3.25f};
  const std::vector<std::int32_t> b{7, 8};
  const std::vector<double> c{0.125, -9.0, 4.0, 1e300};
  SafetensorsWriter direct;
  direct.add("a", {3}, a).add("b", {2}, b).add("c", {2, 2}, c).add_metadata("format", "pt");
  direct.write(dir / "direct.safetensors");

  SafetensorsWriter deferred;
  deferred.add_deferred("a", Dtype::F32, {3}).add("b", {2}, b).add_deferred("c", Dtype::F64, {2, 2});
  deferred.add_metadata("format", "pt");
  std::vector<std::string> order;
  deferred.write(dir / "deferred.safetensors", [&](const std::string& name, std::byte* out, std::size_t bytes) {
    order.push_back(name);
    const void* src = name == "a" ? static_cast<const void*>(a.data()) : static_cast<const void*>(c.data());
    ASSERT_EQ(bytes, name == "a" ? a.size() * 4 : c.size() * 8);
    std::memcpy(out, src, bytes);
  });
  EXPECT_EQ(read_bytes(dir / "deferred.safetensors"), read_bytes(dir / "direct.safetensors"));
  // File order: F64 before F32 (widest first), so c is produced before a; b is never asked for.
  EXPECT_EQ(order, (std::vector<std::string>{"c", "a"}));
}

TEST(WriterDeferred, AFailingFillLeavesNoFile) {
  ScratchDir dir;
  SafetensorsWriter writer;
  writer.add_deferred("x", Dtype::F32, {4});
  EXPECT_THROW(writer.write(dir / "m.safetensors",
                            [](const std::string&, std::byte*, std::size_t) { throw std::runtime_error("boom"); }),
               std::runtime_error);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(WriterDeferred, WithoutAFillDeferredTensorsAreRefused) {
  ScratchDir dir;
  SafetensorsWriter writer;
  writer.add_deferred("x", Dtype::BF16, {2, 3});
  EXPECT_THROW(writer.write(dir / "m.safetensors"), std::logic_error);
  EXPECT_THROW(writer.serialize(), std::logic_error);
  EXPECT_TRUE(dir.entries().empty());
  // Validated as add(): a duplicate name is refused.
  EXPECT_THROW(writer.add_deferred("x", Dtype::F32, {1}), format_error);
}

}  // namespace
