#pragma once
// The toy Hugging Face model directory that the merge tests and the command-line fixtures are
// built on, written once for both (tests/io/test_model_merge.cpp,
// tests/tools/make_cli_fixtures.cpp): each module of the PEFT fixture `adapter_dir` gets its PEFT
// base weight (from reference.safetensors) as `<prefix><m>.weight` in `dtype`, a float32 bias
// `<prefix><m>.bias`; an integer buffer `position_ids`; config.json and 1_Pooling/config.json;
// `shards` files and an index when shards > 1 (tensors dealt round-robin). And its quantized
// sibling (write_quantized_toy_model).
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <oft/io/model_merge.hpp>
#include <oft/io/quantized_weights.hpp>
#include <string>
#include <vector>

namespace oft_test {

inline void write_toy_model(const std::filesystem::path& dir,
                            const std::filesystem::path& adapter_dir, int shards,
                            oft::io::Dtype dtype, const std::string& prefix) {
  namespace fs = std::filesystem;
  using oft::io::Dtype;
  fs::create_directories(dir / "1_Pooling");
  std::ofstream(dir / "config.json") << "{\"model_type\": \"toy\"}\n";
  std::ofstream(dir / "1_Pooling" / "config.json") << "{\"pooling\": \"mean\"}\n";
  const auto reference = oft::io::SafetensorsFile::open(adapter_dir / "reference.safetensors");
  const auto adapter = oft::io::PeftOftAdapter::load(adapter_dir);
  // The writers keep pointers to these bytes until write(); moving an inner vector keeps its
  // buffer, so the outer vector may grow.
  std::vector<std::vector<std::byte>> storage;
  std::vector<oft::io::SafetensorsWriter> writers(static_cast<std::size_t>(shards));
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::size_t next = 0;
  const auto shard_name = [&](std::size_t s) {
    return shards == 1
               ? std::string("model.safetensors")
               : oft::detail::message("model-0000", s + 1, "-of-0000", shards, ".safetensors");
  };
  const auto place = [&](const std::string& tensor, Dtype d, std::vector<std::uint64_t> shape,
                         std::vector<std::byte> bytes) {
    storage.push_back(std::move(bytes));
    const std::size_t s = next++ % static_cast<std::size_t>(shards);
    writers[s].add(tensor, d, std::move(shape), storage.back().data(), storage.back().size());
    weight_map[tensor] = shard_name(s);
  };
  for (const auto& m : adapter.modules) {
    const auto base = reference.tensor(m.name + ".base");
    const std::vector<float> values = base.to_floats();
    std::vector<std::byte> bytes(values.size() * (dtype == Dtype::F32 ? 4 : 2));
    oft::io::detail::encode(values.data(), values.size(), dtype, bytes.data());
    place(prefix + m.name + ".weight", dtype, base.shape, std::move(bytes));
    std::vector<std::byte> bias(base.shape[0] * 4);
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = std::byte(i * 7 + 1);
    place(prefix + m.name + ".bias", Dtype::F32, {base.shape[0]}, std::move(bias));
  }
  std::vector<std::byte> ids(6 * 4);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::byte(i);
  place("position_ids", Dtype::I32, {6}, std::move(ids));
  for (int s = 0; s < shards; ++s) {
    writers[static_cast<std::size_t>(s)].add_metadata("format", "pt");
    writers[static_cast<std::size_t>(s)].write(dir / shard_name(static_cast<std::size_t>(s)));
  }
  if (shards > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", 0}};
    index["weight_map"] = weight_map;
    std::ofstream(dir / "model.safetensors.index.json") << index.dump(2) << "\n";
  }
}

/// A model directory whose three layers fc1, fc2 and odd (the PEFT fixture neumann_t5's, from
/// `adapter_dir`/reference.safetensors) are stored by bitsandbytes' keys: fc1 NF4 with double
/// quantization (24 wide, blocks of 64 cross rows), fc2 LLM.int8, odd FP4 (blocks of 32); with
/// `with_bias`, a float32 bias of 0.125 each; config.json holding `config_text` as given.
inline void write_quantized_toy_model(const std::filesystem::path& dir,
                                      const std::filesystem::path& adapter_dir,
                                      const std::string& config_text, bool with_bias) {
  namespace fs = std::filesystem;
  using oft::io::Dtype;
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config_text;
  const auto reference = oft::io::SafetensorsFile::open(adapter_dir / "reference.safetensors");
  std::vector<std::vector<std::byte>> storage;  // alive until write(), as above
  oft::io::SafetensorsWriter writer;
  const auto keep = [&](const oft::io::StoredTensor& t) {
    storage.push_back(t.bytes);
    writer.add(t.name, t.dtype, t.shape, storage.back().data(), storage.back().size());
  };
  for (const std::string m : {"fc1", "fc2", "odd"}) {
    const auto base = reference.tensor(m + ".base");
    const std::vector<float> w = base.to_floats();
    const auto rows = static_cast<oft::Index>(base.shape[0]),
               cols = static_cast<oft::Index>(base.shape[1]);
    const oft::io::StoredLinear layer =
        m == "fc1"   ? oft::io::make_bnb4_linear(m, w, rows, cols, oft::quant::Bnb4Type::NF4, 64, true)
        : m == "fc2" ? oft::io::make_int8_linear(m, w, rows, cols)
                     : oft::io::make_bnb4_linear(m, w, rows, cols, oft::quant::Bnb4Type::FP4, 32, false);
    for (const auto& t : oft::io::write_linear_tensors(layer)) keep(t);
    if (with_bias) {
      const std::vector<float> bias(static_cast<std::size_t>(rows), 0.125f);
      keep(oft::io::StoredTensor{
          m + ".bias",
          Dtype::F32,
          {bias.size()},
          std::vector<std::byte>(reinterpret_cast<const std::byte*>(bias.data()),
                                 reinterpret_cast<const std::byte*>(bias.data() + bias.size()))});
    }
  }
  writer.write(dir / "model.safetensors");
}

}  // namespace oft_test
