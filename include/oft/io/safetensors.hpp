#pragma once
/// \file io/safetensors.hpp
/// oft::io, the safetensors part: include this one header (link oft::io: it needs nlohmann_json).
///
/// - SafetensorsFile (safetensors_reader.hpp): mmap, validate, zero-copy TensorView.
/// - SafetensorsWriter (safetensors_writer.hpp): atomic, reference-identical layout.
/// - ShardedSafetensors (sharded.hpp): `model.safetensors.index.json` read as one model.
/// - Dtype (dtype.hpp): F16/BF16 elements are oft::float16/oft::bfloat16, converted to float
///   exactly (half.hpp).
/// - parse_header (safetensors_header.hpp): validation of a file already in memory.
/// - format_error (errors.hpp): what a malformed file throws.
/// Conventions and every validation rule: docs/io.md.

#include "dtype.hpp"
#include "errors.hpp"
#include "half.hpp"
#include "mapped_file.hpp"
#include "safetensors_header.hpp"
#include "safetensors_reader.hpp"
#include "safetensors_writer.hpp"
#include "sharded.hpp"
#include "tensor_view.hpp"
