// ShardedSafetensors: a 2-shard model written by the reference package with a transformers-style
// index (fixtures/sharded), one made by oft's writer, and every refusal of an inconsistent or
// unsafe index.

#include <gtest/gtest.h>

#include <oft/io/safetensors.hpp>

#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "io_test_support.hpp"

namespace {

using namespace oft_io_test;
using oft::io::format_error;
using oft::io::SafetensorsWriter;
using oft::io::ShardedSafetensors;

TEST(Sharded, ReadsTheReferenceModelAsOne) {
  const auto model = ShardedSafetensors::open(fixture("sharded/model.safetensors.index.json"));
  EXPECT_EQ(model.size(), 4u);
  EXPECT_EQ(model.tensor_names(), (std::vector<std::string>{"lm_head.bias", "model.embed.weight", "model.layers.0.weight",
                                                            "model.layers.1.weight"}));
  ASSERT_EQ(model.shards().size(), 2u);
  EXPECT_EQ(model.shards()[0].path().filename(), "model-00002-of-00002.safetensors");  // names lm_head.bias first
  EXPECT_EQ(model.shards()[0].metadata().at("format"), "pt");
  EXPECT_EQ(model.index_metadata().at("total_size").get<std::uint64_t>(), 48u + 16u + 8u + 12u);
  EXPECT_EQ(model.tensor("model.embed.weight").copy_as<float>(),
            (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(model.tensor("model.layers.1.weight").to_floats(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(model.tensor("lm_head.bias").copy_as<std::int32_t>(), (std::vector<std::int32_t>{7, 8, 9}));
  EXPECT_EQ(&model.shard_of("model.layers.0.weight"), &model.shards()[1]);
  EXPECT_TRUE(model.contains("lm_head.bias"));
  EXPECT_FALSE(model.contains("lm_head.weight"));
  try {
    (void)model.tensor("lm_head.weight");
    ADD_FAILURE() << "an unknown tensor was found";
  } catch (const std::out_of_range& error) {
    EXPECT_CONTAINS(std::string(error.what()), "no tensor 'lm_head.weight' in the sharded model (4 tensors)");
  }
}

class ShardedModel : public ::testing::Test {
 protected:
  void SetUp() override {
    write_shard("a.safetensors", {"x", "y"});
    write_shard("b.safetensors", {"z"});
  }
  void write_shard(const std::string& name, const std::vector<std::string>& tensors) {
    SafetensorsWriter writer;
    for (const auto& t : tensors) writer.add(t, {2}, values_);
    writer.write(dir_ / name);
  }
  void write_index(const std::string& json) { write_bytes(dir_ / "model.safetensors.index.json", json); }
  std::string refusal(const std::string& json) {
    write_index(json);
    try {
      (void)ShardedSafetensors::open(dir_ / "model.safetensors.index.json");
    } catch (const format_error& error) {
      const std::string what = error.what();
      EXPECT_STARTS_WITH(what, "oft: " + (dir_ / "model.safetensors.index.json").string() + ": ");
      return what;
    }
    ADD_FAILURE() << "the index was accepted: " << json;
    return {};
  }

  ScratchDir dir_;
  std::vector<float> values_{1.0f, -1.0f};
};

TEST_F(ShardedModel, MadeByTheWriter) {
  write_index(R"({"metadata":{"total_size":24},"weight_map":{"x":"a.safetensors","y":"./a.safetensors","z":"b.safetensors"}})");
  const auto model = ShardedSafetensors::open(dir_ / "model.safetensors.index.json");
  EXPECT_EQ(model.size(), 3u);
  EXPECT_EQ(model.shards().size(), 2u);  // "a" and "./a" are one shard, opened once
  for (const char* name : {"x", "y", "z"}) EXPECT_EQ(model.tensor(name).copy_as<float>(), values_) << name;
}

TEST_F(ShardedModel, ShardInASubdirectoryAndNoMetadata) {
  fs::create_directory(dir_ / "shards");
  fs::rename(dir_ / "b.safetensors", dir_ / "shards" / "b.safetensors");
  write_index(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"shards/b.safetensors"}})");
  const auto model = ShardedSafetensors::open(dir_ / "model.safetensors.index.json");
  EXPECT_EQ(model.tensor("z").copy_as<float>(), values_);
  EXPECT_TRUE(model.index_metadata().empty());
}

TEST_F(ShardedModel, TensorMissingFromItsShard) {
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"a.safetensors"}})"),
                  "weight_map puts tensor 'z' in 'a.safetensors', which does not hold it");
}

TEST_F(ShardedModel, TensorInTwoShards) {
  write_shard("b.safetensors", {"y", "z"});  // y is in a too
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})"),
                  "tensor 'y' is in two shards: 'a.safetensors' (per weight_map) and 'b.safetensors'");
}

TEST_F(ShardedModel, TensorOfAShardMissingFromTheIndex) {
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"a.safetensors","z":"b.safetensors"}})"),
                  "shard 'a.safetensors' holds tensor 'y', which weight_map does not list");
}

TEST_F(ShardedModel, ShardPathsMustStayInTheDirectory) {
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"../a.safetensors"}})"),
                  "weight_map tensor 'x' names shard '../a.safetensors', a path through '..'");
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"sub/../../a.safetensors"}})"), "a path through '..'");
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"/etc/passwd"}})"),
                  "weight_map tensor 'x' names shard '/etc/passwd', an absolute path");
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":""}})"), "names shard '', an empty file name");
  // The NUL is written as \x00: a raw one would cut the message short.
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"a.safetensors\u0000.txt"}})"),
                  "names shard 'a.safetensors\\x00.txt', a name with a NUL character");
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"shards/"}})"), "a directory, not a file");
}

TEST_F(ShardedModel, MalformedIndex) {
  EXPECT_CONTAINS(refusal(R"({"metadata":{}})"), "the index has no \"weight_map\"");
  EXPECT_CONTAINS(refusal(R"({"weight_map":["a.safetensors"]})"), "\"weight_map\" is an array, not an object");
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":1}})"), "weight_map tensor 'x' maps to a number (1), not a shard file name");
  EXPECT_CONTAINS(refusal(R"({"metadata":[],"weight_map":{}})"), "\"metadata\" is an array, not an object");
  EXPECT_CONTAINS(refusal(R"({"weight_map":{"x":"a.safetensors","x":"b.safetensors"}})"),
                  "duplicate key 'x' in 'weight_map'");
  EXPECT_CONTAINS(refusal(R"({"weight_map":{})"), "the index is not valid JSON: ");
  EXPECT_CONTAINS(refusal("[]"), "the index is an array, not an object");
  EXPECT_CONTAINS(refusal("{\"weight_map\":{\"\xff\":1}}"), "the index is not valid UTF-8 (bad byte at offset 16)");
}

TEST_F(ShardedModel, MissingShardNamesItsPath) {
  write_index(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"c.safetensors"}})");
  try {
    (void)ShardedSafetensors::open(dir_ / "model.safetensors.index.json");
    ADD_FAILURE() << "a missing shard was accepted";
  } catch (const std::system_error& error) {
    EXPECT_EQ(error.code().value(), ENOENT);
    EXPECT_CONTAINS(std::string(error.what()), (dir_ / "c.safetensors").string());
  }
}

TEST_F(ShardedModel, MalformedShardNamesTheShard) {
  write_bytes(dir_ / "b.safetensors", forge("{}", "junk"));
  write_index(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors"}})");
  try {
    (void)ShardedSafetensors::open(dir_ / "model.safetensors.index.json");
  } catch (...) {
    ADD_FAILURE() << "b is not in the index and must not be opened";
  }
  write_index(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})");
  try {
    (void)ShardedSafetensors::open(dir_ / "model.safetensors.index.json");
    ADD_FAILURE() << "a malformed shard was accepted";
  } catch (const format_error& error) {
    EXPECT_STARTS_WITH(std::string(error.what()), "oft: " + (dir_ / "b.safetensors").string() + ": the data section holds 4 bytes");
  }
}

TEST(Sharded, MissingIndex) {
  EXPECT_THROW((void)ShardedSafetensors::open(fixture("sharded/none.index.json")), std::system_error);
}

}  // namespace
