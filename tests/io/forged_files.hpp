#pragma once
// Malformed safetensors files, each breaking one rule, with what oft's message must say about
// it and whether the reference implementation refuses it too. test_safetensors_validation runs
// oft on each; export_for_reference writes them out so that check_with_reference.py can confirm
// the `reference_refuses` column against the real `safetensors` package.

#include <cstdint>
#include <string>
#include <vector>

#include "io_test_support.hpp"

namespace oft_io_test {

struct ForgedFile {
  std::string name;                   // a gtest-safe identifier
  std::string bytes;                  // the whole file
  std::vector<std::string> expected;  // parts of oft's message (after "oft: <path>: ")
  bool reference_refuses;             // safetensors (Rust) refuses it too
};

inline std::string one_tensor(const std::string& entry) { return "{\"a\":" + entry + "}"; }
inline std::string f32_bytes(std::size_t n) { return std::string(4 * n, '\0'); }

inline std::vector<ForgedFile> forged_files() {
  const std::string f32x2 = f32_bytes(2);
  const std::string two_at = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":)";
  const std::string valid = forge(padded(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})")), f32x2);
  return {
      // The length word.
      {"FiveByteFile", std::string("\x02\0\0\0\0", 5), {"the file holds 5 bytes, fewer than the 8-byte header length"}, true},
      {"EmptyFile", "", {"the file holds 0 bytes"}, true},
      {"HeaderLengthOverLimit", forge("{}", {}, 100'000'001), {"header length 100000001 exceeds the 100000000-byte limit"}, true},
      {"HeaderLengthMaxU64", forge("{}", {}, UINT64_MAX), {"header length 18446744073709551615 exceeds"}, true},
      {"HeaderLengthPastEnd", forge("{}", {}, 1000), {"header length 1000 runs past the end of the file (8 + 1000 > 10 bytes)"}, true},
      {"TruncatedInHeader", valid.substr(0, 20), {"runs past the end of the file"}, true},
      // The header text.
      {"LeadingSpace", forge(" {}"), {"the header does not begin with '{' (byte 0x20)"}, false},
      {"EmptyHeader", forge(""), {"the header does not begin with '{' (it is empty)"}, true},
      {"HeaderIsAnArray", forge("[1]"), {"the header does not begin with '{' (byte 0x5b)"}, true},
      {"InvalidUtf8", forge("{\"a\xff\":1}"), {"the header is not valid UTF-8: byte 0xff at header offset 3"}, true},
      {"OverlongUtf8", forge("{\"\xc0\xaf\":1}"), {"the header is not valid UTF-8: byte 0xc0 at header offset 2"}, true},
      {"SurrogateUtf8", forge("{\"\xed\xa0\x80\":1}"), {"the header is not valid UTF-8: byte 0xed at header offset 2"}, true},
      {"JsonMissingValue", forge("{\"a\": }"), {"the header is not valid JSON: "}, true},
      {"JsonTrailingGarbage", forge("{} x"), {"the header is not valid JSON: "}, true},
      {"JsonUnterminated", forge("{\"a\":1"), {"the header is not valid JSON: "}, true},
      {"NestedTooDeep", forge(one_tensor(R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})"), f32x2),
       {"the header nests JSON deeper than the 3 levels the format uses"}, true},
      // Duplicate keys (forbidden by the format; the reference keeps the last one).
      {"DuplicateTensor",
       forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f32x2),
       {"duplicate key 'a' in the header (safetensors forbids duplicate keys)"}, false},
      {"DuplicateMetadataKey", forge(R"({"__metadata__":{"format":"pt","format":"np"}})"),
       {"duplicate key 'format' in '__metadata__'"}, false},
      {"DuplicateTensorField", forge(one_tensor(R"({"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]})"), f32x2),
       {"duplicate key 'dtype' in 'a'"}, true},  // serde refuses a duplicate field of a struct
      {"DuplicateMetadataSection", forge(R"({"__metadata__":{},"__metadata__":{}})"),
       {"duplicate key '__metadata__' in the header"}, true},
      // __metadata__.
      {"MetadataNumberValue", forge(R"({"__metadata__":{"n":3}})"),
       {"__metadata__ key 'n' holds a number (3); safetensors metadata values must be strings"}, true},
      {"MetadataObjectValue", forge(R"({"__metadata__":{"o":{"x":"y"}}})"), {"__metadata__ key 'o' holds an object"}, true},
      {"MetadataArray", forge(R"({"__metadata__":["a"]})"), {"__metadata__ is an array, not an object of strings"}, true},
      {"MetadataString", forge(R"({"__metadata__":"pt"})"), {"__metadata__ is a string"}, true},
      // Tensor entries.
      {"EntryNotAnObject", forge(R"({"a":3})"), {"tensor 'a' is a number, not an object"}, true},
      {"MissingDtype", forge(one_tensor(R"({"shape":[2],"data_offsets":[0,8]})"), f32x2), {"tensor 'a' has no \"dtype\""}, true},
      {"MissingShape", forge(one_tensor(R"({"dtype":"F32","data_offsets":[0,8]})"), f32x2), {"tensor 'a' has no \"shape\""}, true},
      {"MissingOffsets", forge(one_tensor(R"({"dtype":"F32","shape":[2]})"), f32x2), {"tensor 'a' has no \"data_offsets\""}, true},
      {"UnknownField", forge(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"order":"F"})"), f32x2),
       {"tensor 'a' has an unknown field 'order'"}, false},
      {"UnknownDtype", forge(one_tensor(R"({"dtype":"F17","shape":[2],"data_offsets":[0,8]})"), f32x2),
       {"tensor 'a' has unknown dtype \"F17\" (known: BOOL, F4, F6_E2M3,", "BF16, I32, U32, F32, C64, F64, I64, U64)"}, true},
      {"LowercaseDtype", forge(one_tensor(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})"), f32x2),
       {"tensor 'a' has unknown dtype \"f32\""}, true},
      {"NumericDtype", forge(one_tensor(R"({"dtype":32,"shape":[2],"data_offsets":[0,8]})"), f32x2),
       {"tensor 'a' dtype is a number (32), not a string"}, true},
      {"NegativeDimension", forge(one_tensor(R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]})"), f32x2),
       {"tensor 'a' shape [2,-1]: dimension 1 is -1, not a non-negative integer"}, true},
      {"FractionalDimension", forge(one_tensor(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), f32x2),
       {"tensor 'a' shape [2.0]: dimension 0 is 2.0, not a non-negative integer"}, true},
      {"StringDimension", forge(one_tensor(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), f32x2),
       {"dimension 0 is \"2\", not a non-negative integer"}, true},
      {"DimensionBeyondU64", forge(one_tensor(R"({"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]})"), f32x2),
       {"tensor 'a' shape [", "dimension 0 is", "not a non-negative integer"}, true},
      // serde_json reads -0 as a float, which is no usize.
      {"NegativeZeroDimension", forge(one_tensor(R"({"dtype":"F32","shape":[-0],"data_offsets":[0,0]})")),
       {"tensor 'a' shape [-0]: dimension 0 is -0, not a non-negative integer"}, true},
      {"ShapeNotAnArray", forge(one_tensor(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), f32x2),
       {"tensor 'a' shape is a number (2), not an array"}, true},
      {"OneOffset", forge(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[8]})"), f32x2),
       {"tensor 'a' data_offsets [8] are not two non-negative integers [begin, end]"}, true},
      {"NegativeOffset", forge(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), f32x2),
       {"tensor 'a' data_offsets [-8,0] are not two non-negative integers"}, true},
      {"NegativeZeroOffset", forge(one_tensor(R"({"dtype":"F32","shape":[0],"data_offsets":[0,-0]})")),
       {"tensor 'a' data_offsets [0,-0] are not two non-negative integers"}, true},
      {"ThreeOffsets", forge(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,16]})"), f32x2),
       {"tensor 'a' data_offsets [0,8,16] are not two non-negative integers"}, true},
      {"BeginAfterEnd", forge(one_tensor(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), f32x2),
       {"tensor 'a' data_offsets [8, 0) begin after they end"}, true},
      // Sizes.
      {"SizeMismatch", forge(R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", f32_bytes(3)),
       {"tensor 'a.weight' data_offsets [0, 12) hold 12 bytes, but shape [2, 2] of F32 needs 16"}, true},
      {"ElementCountOverflow",
       forge(one_tensor(R"({"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]})")),
       {"tensor 'a' shape [1099511627776, 1099511627776] of F32: elements x 32 bits overflows 64 bits"}, true},
      {"BitCountOverflow", forge(one_tensor(R"({"dtype":"F32","shape":[2305843009213693952],"data_offsets":[0,0]})")),
       {"tensor 'a' shape [2305843009213693952] of F32: elements x 32 bits overflows 64 bits"}, true},
      // The reference multiplies left to right: an overflow before a 0 is refused there, so here too.
      {"OverflowBeforeZero",
       forge(one_tensor(R"({"dtype":"F32","shape":[1099511627776,1099511627776,0],"data_offsets":[0,0]})")),
       {"overflows 64 bits"}, true},
      {"PartialByte", forge(one_tensor(R"({"dtype":"F4","shape":[3],"data_offsets":[0,2]})"), "xy"),
       {"tensor 'a' shape [3] of F4 is not a whole number of bytes"}, true},
      // Layout.
      {"HoleBetweenTensors", forge(two_at + "[8,12]}}", f32_bytes(3)),
       {"tensor 'b' data_offsets [8, 12) leave a hole of 4 bytes after tensor 'a' ending at 4"}, true},
      {"HoleAtStart", forge(one_tensor(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), f32x2),
       {"tensor 'a' data_offsets [4, 8) leave a hole of 4 bytes after the start of the data section"}, true},
      {"Overlap",
       forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             f32_bytes(3)),
       {"tensor 'b' data_offsets [4, 12) overlap tensor 'a' [0, 8)"}, true},
      {"SameBytesTwice",
       forge(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", f32x2),
       {"tensor 'b' data_offsets [0, 8) overlap tensor 'a' [0, 8)"}, true},
      {"EndPastData", forge(one_tensor(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), f32_bytes(3)),
       {"tensor 'a' data_offsets [0, 16) run past the data section, which holds 12 bytes"}, true},
      {"TruncatedInData", valid.substr(0, valid.size() - 1),
       {"tensor 'a' data_offsets [0, 8) run past the data section, which holds 7 bytes"}, true},
      {"TrailingBytes", valid + "junk",
       {"the data section holds 12 bytes but the tensors cover 8: 4 trailing bytes after tensor 'a'"}, true},
      {"ControlCharacterInName", forge(R"({"a\nb":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2),
       {"tensor 'a\\x0ab' data_offsets [4, 8) leave a hole"}, true},  // escaped in the message
      {"TrailingBytesNoTensor", forge("{}", "x"), {"the data section holds 1 bytes but the tensors cover 0: 1 trailing bytes"}, true},
  };
}

}  // namespace oft_io_test
