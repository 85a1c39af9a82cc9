// 04_peft_adapter_merge: read an OFT adapter saved by Hugging Face PEFT and merge it into the
// base weights in C++ (needs oft::io, i.e. nlohmann_json; see docs/io.md).
//
//   1. oft::io::PeftOftAdapter::load(dir) reads adapter_config.json + adapter_model.safetensors:
//      one module per `<module>.oft_R.weight`, b from each tensor's row length, and the policy
//      that reproduces PEFT (here use_cayley_neumann=True, num_cayley_neumann_terms=5).
//   2. The frozen weights come from a safetensors file (oft::io::SafetensorsFile, memory-mapped).
//   3. adapter.merge(module, W0) gives W' = W0 R^T, what PEFT's merge_and_unload gives; the
//      same weight from an OftLinear layer built on the module's generators (layer.merged()),
//      and a plain linear layer with W' reproduces the adapted layer's forward.
//   4. The merged weights are written to a new safetensors file and read back.
//
// The adapter is a fixture trained and merged by PEFT 0.21.2 itself (tests/peft/make_adapters.py):
// its reference.safetensors holds `<m>.base` and PEFT's `<m>.merged` for every module, which is
// the check. Usage: 04_peft_adapter_merge [adapter_dir]. Exits non-zero on any mismatch.

#include <oft/io/peft_adapter.hpp>
#include <oft/oft.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#ifndef OFT_EXAMPLE_PEFT_ADAPTER
#define OFT_EXAMPLE_PEFT_ADAPTER "tests/peft/fixtures/adapters/neumann_t5"
#endif

namespace {

using RowsF = oft::RowMatrix<float>;

RowsF read_matrix(const oft::io::SafetensorsFile& file, const std::string& key) {
  const oft::io::TensorView t = file.tensor(key);  // throws naming the file and key if absent
  const std::vector<float> values = t.copy_as<float>();
  RowsF out(static_cast<oft::Index>(t.shape.at(0)), static_cast<oft::Index>(t.shape.at(1)));
  std::copy(values.begin(), values.end(), out.data());
  return out;
}

double relative(const RowsF& a, const RowsF& b) {
  return double((a - b).cwiseAbs().maxCoeff()) / double(b.cwiseAbs().maxCoeff());
}

}  // namespace

int main(int argc, char** argv) {
  const std::filesystem::path dir = argc > 1 ? argv[1] : OFT_EXAMPLE_PEFT_ADAPTER;
  const auto adapter = oft::io::PeftOftAdapter::load(dir);
  const auto reference = oft::io::SafetensorsFile::open(dir / "reference.safetensors");
  std::printf("%s: PEFT %s, %s, %zu modules\n", dir.string().c_str(),
              adapter.config.peft_version.c_str(), oft::policy_name(adapter.config.policy()).c_str(),
              adapter.modules.size());

  // float32 on both sides with different summation orders: a few float epsilons relative.
  const double tolerance = 2e-6;
  int failures = 0;
  oft::io::SafetensorsWriter writer;
  std::vector<RowsF> merged_weights;
  merged_weights.reserve(adapter.modules.size());
  for (const auto& m : adapter.modules) {
    const RowsF w0 = read_matrix(reference, m.name + ".base");
    const RowsF peft_merged = read_matrix(reference, m.name + ".merged");

    // The library's merge: W' = W0 R^T with PEFT's polynomial.
    const RowsF merged = adapter.merge(m, oft::view(w0));
    const double e_merge = relative(merged, peft_merged);

    // The same through a layer: OftLinear over W0 with the policy PEFT's config names (the
    // exact branch's theta is held negated, so ExactCayley on it is PEFT's R).
    RowsF x(5, w0.cols()), z(5, w0.rows());
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    for (oft::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
    double e_layer = 0.0, e_forward = 0.0;
    const auto check_layer = [&](auto policy) {
      oft::OftLinear<float, decltype(policy)> layer(oft::view(w0), nullptr, m.spec.block_size,
                                                    m.spec.shared, policy);
      layer.set_generators(adapter.effective_generators(m));
      e_layer = relative(layer.merged(), peft_merged);
      // A plain linear layer with W' computes what the adapted layer computes.
      oft::Workspace<float> workspace;
      layer.forward(oft::view(x), oft::view(z), workspace);
      e_forward = relative(x * merged.transpose(), z);
    };
    if (m.kind != oft::io::PeftModuleKind::Linear)
      e_layer = e_forward = 0.0;  // an Embedding merges as E R: no OftLinear to compare with
    else if (adapter.config.use_cayley_neumann)
      check_layer(oft::peft::NeumannBranch{adapter.config.num_cayley_neumann_terms,
                                           adapter.config.neumann_form()});
    else
      check_layer(oft::ExactCayley{});

    const bool ok = e_merge < tolerance && e_layer < tolerance && e_forward < 1e-5;
    std::printf("  %-4s %3td x %-3td r = %td, b = %td: |merge - PEFT| %.1e, layer.merged() %.1e, "
                "X W'^T vs forward %.1e  %s\n",
                m.name.c_str(), w0.rows(), w0.cols(), m.spec.blocks, m.spec.block_size, e_merge,
                e_layer, e_forward, ok ? "ok" : "FAILED");
    failures += ok ? 0 : 1;
    merged_weights.push_back(merged);
  }

  // Write the merged weights under the model's own names and read one back (the writer keeps
  // pointers to the data until write()).
  for (size_t i = 0; i < adapter.modules.size(); ++i) {
    const RowsF& w = merged_weights[i];
    writer.add(adapter.modules[i].name + ".weight",
               {static_cast<std::uint64_t>(w.rows()), static_cast<std::uint64_t>(w.cols())},
               w.data());
  }
  const std::filesystem::path out =
      std::filesystem::temp_directory_path() / "oft_example_04_merged.safetensors";
  writer.write(out);
  const auto written = oft::io::SafetensorsFile::open(out);
  const bool round_trip =
      read_matrix(written, adapter.modules[0].name + ".weight") == merged_weights[0];
  std::printf("  wrote %s (%zu tensors), read back %s\n", out.string().c_str(),
              written.tensor_names().size(), round_trip ? "bit for bit" : "DIFFERENT");
  std::filesystem::remove(out);
  failures += round_trip ? 0 : 1;

  std::printf("%s\n", failures == 0 ? "all merges equal PEFT's" : "MISMATCH");
  return failures == 0 ? 0 : 1;
}
