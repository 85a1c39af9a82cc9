#pragma once
/// \file io/model_directory.hpp
/// A Hugging Face model directory opened for reading: either `model.safetensors.index.json` and
/// its shards, or one `*.safetensors` file, seen as one name -> (file, view) map. Every file is
/// validated when opened (io/sharded.hpp, io/safetensors_reader.hpp); the tensors stay memory
/// mapped, so opening costs no copy of the weights.

#include <cstddef>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "errors.hpp"
#include "safetensors_reader.hpp"
#include "sharded.hpp"
#include "tensor_view.hpp"

namespace oft::io {

/// The safetensors files of a model directory and where each tensor lives. Also a tensor source
/// for read_linear (io/quantized_weights.hpp): contains(name) and tensor(name).
struct ModelDirectory {
  std::filesystem::path directory;
  std::filesystem::path index_path;          ///< empty for a single file
  std::vector<SafetensorsFile> files;        ///< in the order of file_names
  std::vector<std::string> file_names;       ///< relative to directory, as the index names them
  std::map<std::string, std::size_t> where;  ///< tensor name -> index into files

  /// Opens `directory`. Throws std::invalid_argument when it is not a directory, or has neither
  /// an index nor exactly one `.safetensors` file; format_error for a malformed file or index.
  static ModelDirectory open(const std::filesystem::path& directory) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(directory))
      throw std::invalid_argument(
          "oft: base '" + directory.string() +
          "' is not a directory (a Hugging Face model directory is expected)");
    ModelDirectory model;
    model.directory = directory;
    const fs::path index = directory / "model.safetensors.index.json";
    if (fs::exists(index)) {
      model.index_path = index;
      const ShardedSafetensors sharded = ShardedSafetensors::open(index);  // validates all
      std::set<std::string> names;
      for (const auto& shard : sharded.shards())
        names.insert(fs::relative(shard.path(), directory).generic_string());
      for (const std::string& name : names) {
        model.file_names.push_back(name);
        model.files.push_back(SafetensorsFile::open(directory / name));
      }
    } else {
      std::vector<std::string> found;
      for (const auto& entry : fs::directory_iterator(directory))
        if (entry.is_regular_file() && entry.path().extension() == ".safetensors")
          found.push_back(entry.path().filename().string());
      if (found.size() != 1)
        throw std::invalid_argument(
            oft::detail::message("oft: base '", directory.string(), "' has ", found.size(),
                                 " .safetensors files and no model.safetensors.index.json; "
                                 "expected one file or an index"));
      model.file_names = found;
      model.files.push_back(SafetensorsFile::open(directory / found.front()));
    }
    for (std::size_t f = 0; f < model.files.size(); ++f)
      for (const std::string& name : model.files[f].tensor_names()) model.where[name] = f;
    return model;
  }

  bool contains(const std::string& name) const { return where.count(name) != 0; }
  TensorView tensor(const std::string& name) const { return files[where.at(name)].tensor(name); }
};

}  // namespace oft::io
