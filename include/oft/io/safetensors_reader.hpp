#pragma once
/// \file io/safetensors_reader.hpp
/// SafetensorsFile: one .safetensors file, mapped, validated, and viewed without copies.
///
/// ```cpp
/// auto file = oft::io::SafetensorsFile::open("adapter_model.safetensors");
/// oft::io::TensorView w = file.tensor("base_model.model.q_proj.oft_R.weight");
/// oft::io::ConstSpan<float> values = w.as<float>();   // in place, F32 only
/// std::string format = file.metadata().at("format");
/// ```
///
/// open() validates the whole header before returning (safetensors_header.hpp lists the rules),
/// so a SafetensorsFile only ever holds a well-formed file and tensor() cannot fail but for an
/// unknown name. Tensor values are not looked at (NaN and inf are allowed, as in the format).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "errors.hpp"
#include "mapped_file.hpp"
#include "safetensors_header.hpp"
#include "tensor_view.hpp"

namespace oft::io {

class SafetensorsFile {
 public:
  /// Maps and validates `path`. Throws std::system_error (cannot open/map) or format_error.
  static SafetensorsFile open(const std::filesystem::path& path) {
    SafetensorsFile file;
    file.file_ = MappedFile::open(path);
    file.header_ = parse_header(path.string(), file.file_.data(), file.file_.size());
    for (std::size_t i = 0; i < file.header_.tensors.size(); ++i)
      file.index_.emplace(file.header_.tensors[i].name, i);
    return file;
  }

  const std::filesystem::path& path() const noexcept { return file_.path(); }
  /// Number of tensors.
  std::size_t size() const noexcept { return header_.tensors.size(); }
  /// Tensor names in byte order (the order `sorted()` gives in std::string comparison).
  std::vector<std::string> tensor_names() const {
    std::vector<std::string> names;
    names.reserve(index_.size());
    for (const auto& entry : index_) names.push_back(entry.first);
    return names;
  }
  /// The header entries in data order (by offsets).
  const std::vector<TensorInfo>& tensors() const noexcept { return header_.tensors; }
  /// `__metadata__` (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return header_.metadata; }
  /// The validated header (N, entries, metadata).
  const Header& header() const noexcept { return header_; }
  /// The whole file as mapped (views point into it).
  const MappedFile& mapping() const noexcept { return file_; }

  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }
  /// The entry of `name`, or nullptr.
  const TensorInfo* find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &header_.tensors[it->second];
  }
  /// A view of tensor `name`. Throws std::out_of_range naming the file and the tensor.
  TensorView tensor(std::string_view name) const {
    const TensorInfo* info = find(name);
    if (info == nullptr)
      throw std::out_of_range(oft::detail::message("oft: ", path().string(), ": no tensor ", detail::quote_name(name),
                                                   " (the file holds ", size(), " tensors)"));
    return view(*info);
  }
  /// A view of the entry `info`, which must be one of tensors() (std::invalid_argument if not:
  /// another file's offsets could point anywhere).
  TensorView view(const TensorInfo& info) const {
    const TensorInfo* first = header_.tensors.data();
    const std::less<const TensorInfo*> before;  // a total order, also for unrelated pointers
    if (header_.tensors.empty() || before(&info, first) || !before(&info, first + header_.tensors.size()))
      throw std::invalid_argument(oft::detail::message("oft: ", path().string(), ": view() of tensor ", detail::quote_name(info.name),
                                                       ", an entry that is not one of this file's tensors()"));
    TensorView v;
    v.file = path().string();
    v.name = info.name;
    v.dtype = info.dtype;
    v.shape = info.shape;
    v.data = file_.data() + header_.data_start() + info.begin;
    v.bytes = static_cast<std::size_t>(info.bytes());
    return v;
  }

 private:
  SafetensorsFile() = default;

  MappedFile file_;
  Header header_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in header_.tensors
};

}  // namespace oft::io
