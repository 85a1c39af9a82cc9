#pragma once
/// \file io/sharded.hpp
/// ShardedSafetensors: a model split over several .safetensors files, read as one.
///
/// The index is Hugging Face's `model.safetensors.index.json` (written by transformers'
/// `save_pretrained` and huggingface_hub's `split_torch_state_dict_into_shards`):
/// `{"metadata": {"total_size": ...}, "weight_map": {"tensor name": "shard file name"}}`.
/// Shard names are paths relative to the index's directory. Each shard is opened (and fully
/// validated) once. The index is held to:
///
/// - valid UTF-8 JSON, an object, no duplicate key at any level; `weight_map` an object of
///   strings; `metadata`, when present, an object (kept as JSON: transformers puts numbers in it);
///   other top-level keys are ignored (the index has no formal specification);
/// - every shard name relative, non-empty, without a `..` component or a NUL character (a name
///   cannot reach outside the index's directory through the name; symbolic links are followed);
/// - every tensor of the weight map present in the shard it names; every tensor of every shard
///   listed in the weight map, for that shard: a tensor in two shards or in none of the index
///   is refused.
///
/// Refusals are format_error naming the index, the tensor and the shards; a shard that cannot
/// be opened is std::system_error naming its path.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "detail/json.hpp"
#include "detail/utf8.hpp"
#include "errors.hpp"
#include "mapped_file.hpp"
#include "safetensors_header.hpp"
#include "safetensors_reader.hpp"
#include "tensor_view.hpp"

namespace oft::io {

class ShardedSafetensors {
 public:
  /// Reads the index at `index_json` and opens every shard it names.
  static ShardedSafetensors open(const std::filesystem::path& index_json) {
    using detail::fail;
    const std::string where = index_json.string();
    const MappedFile file = MappedFile::open(index_json);
    if (file.size() > kMaxHeaderBytes)
      fail(where, "the index holds ", file.size(), " bytes, over the ", kMaxHeaderBytes, "-byte limit");
    const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
    if (const std::size_t bad = detail::utf8_error_offset(text); bad != text.size())
      fail(where, "the index is not valid UTF-8 (bad byte at offset ", bad, ")");
    // Depth 64: `metadata` is free-form JSON; the weight map itself needs 2.
    const nlohmann::json json = detail::parse_json_strict(where, text, "the index", 64);
    if (!json.is_object()) fail(where, "the index is ", detail::json_kind(json), ", not an object");

    ShardedSafetensors model;
    model.index_path_ = index_json;
    if (const auto it = json.find("metadata"); it != json.end() && !it->is_null()) {
      if (!it->is_object()) fail(where, "\"metadata\" is ", detail::json_kind(*it), ", not an object");
      model.index_metadata_ = *it;
    } else {
      model.index_metadata_ = nlohmann::json::object();
    }
    const auto map = json.find("weight_map");
    if (map == json.end()) fail(where, "the index has no \"weight_map\"");
    if (!map->is_object()) fail(where, "\"weight_map\" is ", detail::json_kind(*map), ", not an object");

    const std::filesystem::path directory = index_json.parent_path();
    std::map<std::string, std::size_t> shard_of_file;  // normalised shard name -> position in shards_
    std::vector<std::string> shard_names;
    for (const auto& item : map->items()) {
      const std::string tensor = "tensor " + detail::quote_name(item.key());
      if (!item.value().is_string())
        fail(where, "weight_map ", tensor, " maps to ", detail::json_kind(item.value()), " (", item.value().dump(),
             "), not a shard file name");
      const std::string& shard = item.value().get_ref<const std::string&>();
      const std::filesystem::path relative = checked_shard_path(where, item.key(), shard);
      const std::string key = relative.lexically_normal().generic_string();
      auto found = shard_of_file.find(key);
      if (found == shard_of_file.end()) {
        found = shard_of_file.emplace(key, model.shards_.size()).first;
        model.shards_.push_back(SafetensorsFile::open(directory / relative));
        shard_names.push_back(shard);
      }
      model.index_.emplace(item.key(), found->second);
    }

    // Every listed tensor is in its shard...
    for (const auto& [name, shard] : model.index_)
      if (!model.shards_[shard].contains(name))
        fail(where, "weight_map puts tensor ", detail::quote_name(name), " in ", detail::quote_name(shard_names[shard]),
             ", which does not hold it");
    // ...and every tensor of a shard is listed, for that shard (else it is in two shards or unlisted).
    for (std::size_t s = 0; s < model.shards_.size(); ++s)
      for (const TensorInfo& info : model.shards_[s].tensors()) {
        const auto listed = model.index_.find(info.name);
        if (listed == model.index_.end())
          fail(where, "shard ", detail::quote_name(shard_names[s]), " holds tensor ", detail::quote_name(info.name),
               ", which weight_map does not list");
        if (listed->second != s)
          fail(where, "tensor ", detail::quote_name(info.name), " is in two shards: ", detail::quote_name(shard_names[listed->second]),
               " (per weight_map) and ", detail::quote_name(shard_names[s]));
      }
    return model;
  }

  const std::filesystem::path& path() const noexcept { return index_path_; }
  /// Number of tensors over all shards.
  std::size_t size() const noexcept { return index_.size(); }
  /// All tensor names, sorted (std::string order).
  std::vector<std::string> tensor_names() const {
    std::vector<std::string> names;
    names.reserve(index_.size());
    for (const auto& entry : index_) names.push_back(entry.first);
    return names;
  }
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }
  /// A view of tensor `name`, wherever it lives. Throws std::out_of_range naming the index.
  TensorView tensor(std::string_view name) const { return shard_of(name).tensor(name); }
  /// The shard holding `name`. Throws std::out_of_range naming the index and the tensor.
  const SafetensorsFile& shard_of(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end())
      throw std::out_of_range(oft::detail::message("oft: ", index_path_.string(), ": no tensor ", detail::quote_name(name),
                                                   " in the sharded model (", size(), " tensors)"));
    return shards_[it->second];
  }
  /// The shards, each opened once, in the order the weight map (sorted by tensor name) first
  /// names them. Their own `__metadata__` is in shards()[i].metadata().
  const std::vector<SafetensorsFile>& shards() const noexcept { return shards_; }
  /// The index's "metadata" object as JSON (`{}` when absent), e.g. {"total_size": 1234}.
  const nlohmann::json& index_metadata() const noexcept { return index_metadata_; }

 private:
  ShardedSafetensors() = default;

  static std::filesystem::path checked_shard_path(const std::string& where, const std::string& tensor,
                                                  const std::string& shard) {
    const auto refuse = [&](const char* why) {
      detail::fail(where, "weight_map tensor ", detail::quote_name(tensor), " names shard ", detail::quote_name(shard), ", ", why);
    };
    if (shard.empty()) refuse("an empty file name");
    if (shard.find('\0') != std::string::npos) refuse("a name with a NUL character");
    const std::filesystem::path path(shard);
    if (path.is_absolute() || path.has_root_path() || shard.front() == '/')
      refuse("an absolute path (shards must lie in the index's directory)");
    for (const auto& part : path)
      if (part == "..") refuse("a path through '..' (shards must lie in the index's directory)");
    if (!path.has_filename()) refuse("a directory, not a file");
    return path;
  }

  std::filesystem::path index_path_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, std::size_t, std::less<>> index_;  // tensor -> position in shards_
  nlohmann::json index_metadata_;
};

}  // namespace oft::io
