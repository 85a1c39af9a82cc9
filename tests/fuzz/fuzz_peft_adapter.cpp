// libFuzzer target: PeftOftAdapter::load and PeftFamilyAdapter::load (BOFT, HRA) on an arbitrary
// adapter_config.json and adapter_model.safetensors. The input is split at the first 0xFF byte (absent: all config): the
// part before it is the JSON, the part after it the safetensors file. An accepted adapter is merged
// into a small weight per module (the whole math path, with the shapes the file claims, capped so
// one input stays fast). Refusals must be oft's exceptions, never a crash, leak or stray read.
#include <oft/io/peft_adapter.hpp>
#include <oft/io/peft_family_adapter.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::uint8_t* split = std::find(data, data + size, std::uint8_t{0xFF});
  const std::size_t config_size = static_cast<std::size_t>(split - data);
  const std::size_t tensors_at = std::min(size, config_size + 1);
  const oft_fuzz::ScratchDir dir;
  oft_fuzz::write_file(dir.path() / "adapter_config.json", data, config_size);
  oft_fuzz::write_file(dir.path() / "adapter_model.safetensors", data + tensors_at, size - tensors_at);
  const auto refusals_only = [](auto&& load_and_merge) {
    try {
      load_and_merge();
    } catch (const oft::io::format_error&) {
    } catch (const std::invalid_argument&) {
    } catch (const std::domain_error&) {
    } catch (const std::out_of_range&) {
    }
  };
  refusals_only([&] {
    const auto adapter = oft::io::PeftOftAdapter::load(dir.path());
    for (const auto& m : adapter.modules) {
      if (m.spec.features() > 4096) continue;  // keep one input fast; the math is tested elsewhere
      oft::RowMatrix<float> weight = oft::RowMatrix<float>::Constant(2, m.spec.features(), 0.5f);
      (void)adapter.merge(m, oft::view(weight));
    }
  });
  refusals_only([&] {
    const auto adapter = oft::io::PeftFamilyAdapter::load(dir.path());
    for (const auto& m : adapter.modules) {
      const oft::Index rows = m.boft_s.empty() ? 2 : m.out_features();  // BOFT's base has one row per s
      if (m.features > 4096 || rows > 4096) continue;
      oft::RowMatrix<double> weight = oft::RowMatrix<double>::Constant(rows, m.features, 0.5);
      const oft::RowMatrix<double> merged = adapter.merge<double>(m, oft::view(weight));
      (void)adapter.unmerge<double>(m, oft::view(merged));
    }
  });
  return 0;
}
