// AdapterBank: each token's row equals what the single-adapter operator gives that row, for
// random interleavings of ids (with -1, empty segments, one token, 2049 tokens), mixed policies
// and block sizes, both routings, in place and out of place, float, double and bfloat16; shards
// equal the whole; bad input is refused before anything is written; add/replace/remove while
// other threads apply.
#include <oft/adapter_bank.hpp>
#include <oft/any_operator.hpp>
#include <oft/block_orthogonal.hpp>
#include <oft/cayley.hpp>

#include <atomic>
#include <memory>
#include <thread>

#include "../test_support.hpp"

namespace {

using oft::AdapterBank;
using oft::BankRouting;
using oft::BlockSpec;
using oft::Index;
using oft_test::RowMat;
using oft_test::Rng;

/// A mix of policies and block sizes for a layer of d features: exact Cayley, Cayley-Neumann,
/// a shared generator, odd and non-power-of-two b.
template <class Scalar>
std::vector<oft::AnyBlockOrthogonal<Scalar>> make_operators(Index d, const std::vector<Index>& sizes,
                                                            Rng& rng) {
  std::vector<oft::AnyBlockOrthogonal<Scalar>> ops;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const Index b = sizes[k];
    const bool shared = k % 3 == 2;
    const BlockSpec spec = BlockSpec::from_features(d, b, shared);
    const oft::AnyPolicy policy =
        k % 2 == 0 ? oft::AnyPolicy{oft::ExactCayley{}} : oft::AnyPolicy{oft::CayleyNeumann{4}};
    oft::AnyBlockOrthogonal<Scalar> op(spec, policy);
    op.set_generators(oft_test::random_generators<Scalar>(spec.generators(), b, 0.5, rng));
    ops.push_back(std::move(op));
  }
  return ops;
}

/// Row t of the result: the operator of ids[t] applied to row t alone, or the row itself.
template <class Scalar, class Act>
RowMat<Act> reference(const std::vector<oft::AnyBlockOrthogonal<Scalar>>& ops,
                      const std::vector<Index>& slot_of_op, const RowMat<Act>& x,
                      const std::vector<std::int32_t>& ids) {
  RowMat<Act> y = x;
  for (Index t = 0; t < x.rows(); ++t) {
    if (ids[static_cast<std::size_t>(t)] < 0) continue;
    std::size_t op = 0;
    while (slot_of_op[op] != ids[static_cast<std::size_t>(t)]) ++op;
    oft::ConstMatrixView<Act> in(x.data() + t * x.cols(), 1, x.cols());
    oft::MatrixView<Act> out(y.data() + t * y.cols(), 1, y.cols());
    ops[op].apply(in, out);
  }
  return y;
}

/// The largest |a - b| over all entries (0 for empty matrices, where Eigen's maxCoeff asserts).
template <class Scalar>
double max_difference(const RowMat<Scalar>& a, const RowMat<Scalar>& b) {
  return a.size() == 0 ? 0.0 : static_cast<double>((a - b).cwiseAbs().maxCoeff());
}

template <class Scalar>
double tolerance(Index b) {
  // Each output is one length-b dot product of |x| <= 1 with a column of an orthogonal block
  // (|R_ij| <= 1, column norm 1): gamma_b sqrt(b) bounds the rounding error (Higham eq. 3.5);
  // the two sides differ by at most twice that.
  return 2.0 * oft_test::gamma<Scalar>(b) * std::sqrt(static_cast<double>(b));
}

std::vector<std::int32_t> random_ids(Index n, Index adapters, Rng& rng) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.index(adapters + 1)) - 1;
  return ids;
}

/// Sorted runs (prefill): request k's tokens together, some requests empty, one with no adapter.
std::vector<std::int32_t> run_ids(const std::vector<Index>& lengths,
                                  const std::vector<std::int32_t>& slots) {
  std::vector<std::int32_t> ids;
  for (std::size_t k = 0; k < lengths.size(); ++k)
    ids.insert(ids.end(), static_cast<std::size_t>(lengths[k]), slots[k]);
  return ids;
}

template <class Scalar>
class AdapterBankTest : public ::testing::Test {};
struct ScalarNames {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AdapterBankTest, Scalars, ScalarNames);

TYPED_TEST(AdapterBankTest, EachTokenGetsItsOwnAdaptersRotation) {
  using Scalar = TypeParam;
  Rng rng(11);
  const Index d = 96;
  const std::vector<Index> sizes = {8, 32, 24, 3, 16, 96};
  const auto ops = make_operators<Scalar>(d, sizes, rng);
  AdapterBank<Scalar> bank(d, 8);
  std::vector<Index> slots;
  for (const auto& op : ops) slots.push_back(bank.add(op));
  ASSERT_EQ(bank.size(), 6);
  const Index adapters = static_cast<Index>(ops.size());

  const std::vector<std::pair<Index, std::vector<std::int32_t>>> cases = [&] {
    std::vector<std::pair<Index, std::vector<std::int32_t>>> all;
    for (const Index n : {Index{0}, Index{1}, Index{7}, Index{64}, Index{2049}})
      all.push_back({n, random_ids(n, adapters, rng)});
    // Prefill: runs per request, an empty request (slot 1), and a request with no adapter.
    all.push_back({0, run_ids({13, 0, 40, 5, 1, 27}, {0, 1, 2, -1, 3, 5})});
    all.push_back({0, run_ids({512, 512, 512}, {4, 0, 5})});
    all.push_back({0, std::vector<std::int32_t>(9, -1)});
    return all;
  }();
  for (const auto& [unused, ids] : cases) {
    (void)unused;
    const Index n = static_cast<Index>(ids.size());
    const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
    const RowMat<Scalar> expected = reference(ops, slots, x, ids);
    double bound = 0.0;
    for (const Index b : sizes) bound = std::max(bound, tolerance<Scalar>(b));
    for (const BankRouting routing :
         {BankRouting::Automatic, BankRouting::Contiguous, BankRouting::Gathered}) {
      RowMat<Scalar> y = RowMat<Scalar>::Constant(n, d, Scalar(7));
      bank.apply(oft::ConstMatrixView<Scalar>(x.data(), n, d), oft::MatrixView<Scalar>(y.data(), n, d),
                 ids, routing);
      EXPECT_LE(max_difference(y, expected), bound)
          << "n=" << n << " routing=" << static_cast<int>(routing);
      RowMat<Scalar> inplace = x;
      oft::MatrixView<Scalar> view(inplace.data(), n, d);
      bank.apply(oft::ConstMatrixView<Scalar>(view), view, ids, routing);
      EXPECT_LE(max_difference(inplace, expected), bound)
          << "in place, n=" << n << " routing=" << static_cast<int>(routing);
    }
  }
}

TYPED_TEST(AdapterBankTest, AutomaticRoutingFollowsTheShapeOfTheIds) {
  using Scalar = TypeParam;
  Rng rng(5);
  const Index d = 64;
  const auto ops = make_operators<Scalar>(d, {16, 32}, rng);
  AdapterBank<Scalar> bank(d, 4);
  for (const auto& op : ops) bank.add(op);
  const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(64, d, rng);
  RowMat<Scalar> y(64, d);
  const auto apply = [&](const std::vector<std::int32_t>& ids) {
    return bank.apply(oft::ConstMatrixView<Scalar>(x.data(), 64, d),
                      oft::MatrixView<Scalar>(y.data(), 64, d), ids);
  };
  std::vector<std::int32_t> decode(64);
  for (std::size_t t = 0; t < decode.size(); ++t) decode[t] = static_cast<std::int32_t>(t % 2);
  EXPECT_EQ(apply(decode), BankRouting::Gathered);        // runs of one token
  EXPECT_EQ(apply(run_ids({32, 32}, {0, 1})), BankRouting::Contiguous);  // two requests
}

TEST(AdapterBankBf16, MatchesTheSingleAdapterFloatPathBitForBit) {
  Rng rng(23);
  const Index d = 128;
  const std::vector<Index> sizes = {16, 32, 8, 64};
  auto ops = make_operators<float>(d, sizes, rng);
  // The reference: each operator's bfloat16 apply in float arithmetic (what the bank computes).
  for (auto& op : ops) op.set_bf16_arithmetic(oft::Bf16Arithmetic::Float);
  AdapterBank<float> bank(d, 4);
  std::vector<Index> slots;
  for (const auto& op : ops) slots.push_back(bank.add(op));
  for (const Index n : {Index{1}, Index{33}, Index{300}}) {
    const auto ids = random_ids(n, 4, rng);
    RowMat<oft::bfloat16> x(n, d);
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < d; ++j) x(i, j) = oft::bfloat16(static_cast<float>(rng.uniform()));
    const RowMat<oft::bfloat16> expected = reference(ops, slots, x, ids);
    for (const BankRouting routing : {BankRouting::Contiguous, BankRouting::Gathered}) {
      RowMat<oft::bfloat16> y(n, d);
      bank.apply(oft::ConstMatrixView<oft::bfloat16>(x.data(), n, d),
                 oft::MatrixView<oft::bfloat16>(y.data(), n, d), ids, routing);
      EXPECT_EQ(std::memcmp(y.data(), expected.data(), sizeof(oft::bfloat16) * n * d), 0)
          << "n=" << n << " routing=" << static_cast<int>(routing);
    }
  }
}

TEST(AdapterBankBf16, DotProductMatchesTheSingleAdapterDotProductBitForBit) {
  if (!oft::kBf16DotProductAvailable) {
    EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
        [] { AdapterBank<float>(64, 2, oft::RotationStorage::Scalar, oft::Bf16Arithmetic::DotProduct); },
        {"DotProduct needs a build with AVX512_BF16"}));
    GTEST_SKIP() << "this build has no AVX512_BF16 (vdpbf16ps): the refusal above is what it can check";
  }
  Rng rng(29);
  // b = 15 (odd: a half pair at the end), 8 and 24 (one register tile, rotated in place), 40 and
  // 60 (several tiles per row: an in-place item is copied first), and a shared generator.
  const Index d = 120;
  const std::vector<Index> sizes = {8, 24, 40, 15, 60};
  auto ops = make_operators<float>(d, sizes, rng);
  for (auto& op : ops) op.set_bf16_arithmetic(oft::Bf16Arithmetic::DotProduct);
  // bfloat16 storage rounds the float R kept for float activations; the pairs are packed from R
  // before that rounding, so both banks give the operator's bits.
  for (const auto storage : {oft::RotationStorage::Scalar, oft::RotationStorage::BFloat16}) {
    AdapterBank<float> bank(d, 5, storage, oft::Bf16Arithmetic::DotProduct);
    EXPECT_EQ(bank.bf16_arithmetic(), oft::Bf16Arithmetic::DotProduct);
    std::vector<Index> slots;
    for (const auto& op : ops) slots.push_back(bank.add(op));
    for (const Index n : {Index{1}, Index{7}, Index{33}, Index{2049}}) {
      const auto ids = random_ids(n, 5, rng);
      RowMat<oft::bfloat16> x(n, d);
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < d; ++j)
          x(i, j) = oft::bfloat16(static_cast<float>(2.0 * rng.uniform() - 1.0));
      const RowMat<oft::bfloat16> expected = reference(ops, slots, x, ids);
      const auto bytes = sizeof(oft::bfloat16) * static_cast<std::size_t>(n * d);
      for (const BankRouting routing : {BankRouting::Contiguous, BankRouting::Gathered}) {
        RowMat<oft::bfloat16> y(n, d);
        bank.apply(oft::ConstMatrixView<oft::bfloat16>(x.data(), n, d),
                   oft::MatrixView<oft::bfloat16>(y.data(), n, d), ids, routing);
        EXPECT_EQ(std::memcmp(y.data(), expected.data(), bytes), 0)
            << "out of place, n=" << n << " routing=" << static_cast<int>(routing);
        RowMat<oft::bfloat16> z = x;
        bank.apply(oft::ConstMatrixView<oft::bfloat16>(z.data(), n, d),
                   oft::MatrixView<oft::bfloat16>(z.data(), n, d), ids, routing);
        EXPECT_EQ(std::memcmp(z.data(), expected.data(), bytes), 0)
            << "in place, n=" << n << " routing=" << static_cast<int>(routing);
      }
    }
    // The rotation is not the identity: a bank that skipped D (or used D^T) would differ.
    const auto ids = random_ids(64, 5, rng);
    RowMat<oft::bfloat16> x(64, d), y(64, d);
    for (Index k = 0; k < x.size(); ++k) x.data()[k] = oft::bfloat16(static_cast<float>(rng.uniform()));
    bank.apply(oft::ConstMatrixView<oft::bfloat16>(x.data(), 64, d),
               oft::MatrixView<oft::bfloat16>(y.data(), 64, d), ids);
    EXPECT_NE(std::memcmp(y.data(), x.data(), sizeof(oft::bfloat16) * 64 * d), 0);
  }
  // The pairs cost b^2 x 2 bytes a block: one and a half times the float blocks' bytes in all.
  AdapterBank<float> plain(d, 1), packed(d, 1, oft::RotationStorage::Scalar,
                                         oft::Bf16Arithmetic::DotProduct);
  plain.add(ops[0]);
  packed.add(ops[0]);
  EXPECT_EQ(packed.adapter_bytes(0) * 2, plain.adapter_bytes(0) * 3);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { AdapterBank<double>(d, 2, oft::RotationStorage::Scalar, oft::Bf16Arithmetic::DotProduct); },
      {"DotProduct is for float banks"}));
}

TEST(AdapterBankStorage, Bf16BlocksAreTheFloatBankOfTheRoundedRotation) {
  // A bfloat16-stored bank rounds R once (nearest even) and widens it exactly when it computes:
  // bit for bit a float bank given the rounded blocks, at half the bytes.
  Rng rng(31);
  const Index d = 96;
  const auto ops = make_operators<float>(d, {8, 32, 24, 16}, rng);
  AdapterBank<float> half(d, 4, oft::RotationStorage::BFloat16), rounded(d, 4);
  for (const auto& op : ops) {
    half.add(op);
    std::vector<float> blocks;
    for (Index g = 0; g < op.spec().generators(); ++g) {
      const RowMat<float> r = op.block(g);
      for (Index k = 0; k < r.size(); ++k)
        blocks.push_back(static_cast<float>(oft::bfloat16(r.data()[k])));  // nearest even
    }
    rounded.add(op.spec(), blocks.data());
  }
  EXPECT_EQ(half.adapter_bytes(1) * 2, rounded.adapter_bytes(1));
  const Index n = 301;
  const auto ids = random_ids(n, 4, rng);
  const RowMat<float> x = oft_test::random_matrix<float>(n, d, rng);
  for (const BankRouting routing : {BankRouting::Contiguous, BankRouting::Gathered}) {
    RowMat<float> y_half(n, d), y_rounded(n, d);
    half.apply(oft::ConstMatrixView<float>(x.data(), n, d), oft::MatrixView<float>(y_half.data(), n, d),
               ids, routing);
    rounded.apply(oft::ConstMatrixView<float>(x.data(), n, d),
                  oft::MatrixView<float>(y_rounded.data(), n, d), ids, routing);
    EXPECT_EQ(y_half, y_rounded) << "routing=" << static_cast<int>(routing);
  }
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>(
      [&] { AdapterBank<double>(d, 2, oft::RotationStorage::BFloat16); },
      {"bfloat16 storage of R is for float banks"}));
}

TYPED_TEST(AdapterBankTest, TwoShardsEqualTheWhole) {
  using Scalar = TypeParam;
  Rng rng(3);
  const Index d = 128;
  const auto ops = make_operators<Scalar>(d, {8, 16, 32, 64}, rng);
  AdapterBank<Scalar> whole(d, 4);
  AdapterBank<Scalar> left(d, 4, oft::FeatureRange{0, 64});
  AdapterBank<Scalar> right(d, 4, oft::FeatureRange{64, 64});
  for (const auto& op : ops) {
    whole.add(op);
    left.add(op);
    right.add(op);
  }
  EXPECT_EQ(left.adapter_bytes(0) + right.adapter_bytes(0), whole.adapter_bytes(0));
  const Index n = 257;
  const auto ids = random_ids(n, 4, rng);
  const RowMat<Scalar> x = oft_test::random_matrix<Scalar>(n, d, rng);
  RowMat<Scalar> y_whole(n, d), y_sharded(n, d);
  whole.apply(oft::ConstMatrixView<Scalar>(x.data(), n, d),
              oft::MatrixView<Scalar>(y_whole.data(), n, d), ids);
  // Each rank sees only its columns: views of the same buffers with the layer's row stride.
  left.apply(oft::ConstMatrixView<Scalar>(x.data(), n, 64, d),
             oft::MatrixView<Scalar>(y_sharded.data(), n, 64, d), ids);
  right.apply(oft::ConstMatrixView<Scalar>(x.data() + 64, n, 64, d),
              oft::MatrixView<Scalar>(y_sharded.data() + 64, n, 64, d), ids);
  EXPECT_EQ(y_sharded, y_whole);  // the same arithmetic per block: bit for bit
}

TEST(AdapterBankErrors, BadInputIsRefusedBeforeAnythingIsWritten) {
  Rng rng(9);
  const Index d = 64;
  auto ops = make_operators<float>(d, {16, 32}, rng);
  AdapterBank<float> bank(d, 3);
  bank.add(ops[0]);
  bank.add(ops[1]);
  const Index n = 5;
  const RowMat<float> x = oft_test::random_matrix<float>(n, d, rng);
  RowMat<float> y = RowMat<float>::Constant(n, d, 7.0f);
  const RowMat<float> untouched = y;
  const oft::ConstMatrixView<float> xv(x.data(), n, d);
  const oft::MatrixView<float> yv(y.data(), n, d);
  const auto refused = [&](const std::vector<std::int32_t>& ids, const char* part) {
    EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { bank.apply(xv, yv, ids); }, {part}));
    EXPECT_EQ(y, untouched);
  };
  refused({0, 1, 0, 1, 3}, "ids[4]=3 names no adapter");    // out of range
  refused({0, 1, 2, 1, 0}, "ids[2]=2 names no adapter");    // empty slot
  refused({0, -2, 0, 1, 0}, "ids[1]=-2 names no adapter");  // below -1
  refused({0, 1}, "adapter ids have 2 entries, expected one per row of X (5)");
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { bank.apply(oft::ConstMatrixView<float>(x.data(), n, 32, d), yv, {0, 0, 0, 0, 0}); }, {"X has 32 columns, expected the bank's shard width 64"}));

  // An adapter for another width, a block size that does not divide the shard, a full bank.
  auto other = make_operators<float>(96, {32}, rng);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { bank.add(other[0]); }, {"adapter has d=96 (r=3 blocks of b=32), the bank's layer has d=64"}));
  AdapterBank<float> shard(d, 2, oft::FeatureRange{16, 16});
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { shard.add(ops[1]); }, {"adapter block size b=32 does not divide the bank's shard [16, 32)"}));
  bank.add(ops[0]);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { bank.add(ops[0]); }, {"adapter bank is full (capacity 3)"}));
  EXPECT_EQ(bank.size(), 3);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { bank.remove(3); }, {"slot 3 is out of range [0, 3)"}));
  bank.remove(2);
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { bank.remove(2); }, {"slot 2 holds no adapter"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([&] { bank.replace(2, ops[0]); }, {"slot 2 holds no adapter"}));
  EXPECT_TRUE(oft_test::throws_with<std::invalid_argument>([] { AdapterBank<float>(64, 2, oft::FeatureRange{48, 32}); }, {"shard [48, 80) is not a non-empty range"}));

  // A non-finite rotation is a domain error, and the bank is unchanged.
  std::vector<float> blocks(static_cast<std::size_t>(4 * 16 * 16), 0.0f);
  blocks[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(bank.add(BlockSpec::from_features(d, 16), blocks.data()), std::domain_error);
  EXPECT_EQ(bank.size(), 2);
}

TEST(AdapterBankSlots, AddReplaceRemoveLeaveTheOtherAdaptersAlone) {
  Rng rng(17);
  const Index d = 64;
  const auto ops = make_operators<double>(d, {16, 32, 8, 64}, rng);
  AdapterBank<double> bank(d, 3);
  EXPECT_EQ(bank.add(ops[0]), 0);
  EXPECT_EQ(bank.add(ops[1]), 1);
  EXPECT_EQ(bank.add(ops[2]), 2);
  bank.remove(1);
  EXPECT_FALSE(bank.contains(1));
  EXPECT_EQ(bank.add(ops[3]), 1);  // the lowest free slot
  bank.replace(2, ops[1]);
  const Index n = 40;
  const auto ids = random_ids(n, 3, rng);
  const RowMat<double> x = oft_test::random_matrix<double>(n, d, rng);
  RowMat<double> y(n, d);
  bank.apply(oft::ConstMatrixView<double>(x.data(), n, d), oft::MatrixView<double>(y.data(), n, d), ids);
  const std::vector<oft::AnyBlockOrthogonal<double>> now = {ops[0], ops[3], ops[1]};
  EXPECT_LE(max_difference<double>(y, reference(now, {0, 1, 2}, x, ids)), tolerance<double>(64));
  // Rotations given as blocks, as a runtime that computed them elsewhere would add them.
  const RowMat<double> r0 = ops[0].block(0);
  std::vector<double> blocks;
  for (Index i = 0; i < ops[0].spec().blocks; ++i) {
    const RowMat<double> r = ops[0].block(i);
    blocks.insert(blocks.end(), r.data(), r.data() + r.size());
  }
  bank.replace(1, ops[0].spec(), blocks.data());
  EXPECT_EQ(bank.adapter_bytes(1), blocks.size() * sizeof(double));
  EXPECT_EQ(bank.block_size(1), 16);
  RowMat<double> y0(n, d), y1(n, d);
  const std::vector<std::int32_t> all0(static_cast<std::size_t>(n), 0), all1(static_cast<std::size_t>(n), 1);
  bank.apply(oft::ConstMatrixView<double>(x.data(), n, d), oft::MatrixView<double>(y0.data(), n, d), all0);
  bank.apply(oft::ConstMatrixView<double>(x.data(), n, d), oft::MatrixView<double>(y1.data(), n, d), all1);
  EXPECT_EQ(y0, y1);
}

TEST(AdapterBankConcurrency, WritersDoNotDisturbApplies) {
  // Readers apply slots 0 and 1 (never changed) and slot 2, which a writer keeps replacing
  // between two adapters, while it also adds and removes slot 3. Each apply must see one
  // version of slot 2 for all of its tokens (it holds the table for its whole call), and a
  // replaced adapter must not be freed under it (ASan/TSan would report the use after free).
  Rng rng(29);
  const Index d = 64, n = 96;
  const auto ops = make_operators<float>(d, {16, 32, 8, 64, 16}, rng);
  AdapterBank<float> bank(d, 4);
  bank.add(ops[0]);
  bank.add(ops[1]);
  bank.add(ops[2]);
  const auto ids = random_ids(n, 3, rng);  // -1, 0, 1, 2
  const RowMat<float> x = oft_test::random_matrix<float>(n, d, rng);
  const RowMat<float> with_first = reference(ops, {0, 1, 2, 9, 9}, x, ids);
  const RowMat<float> with_second = reference(ops, {0, 1, 9, 2, 9}, x, ids);
  std::atomic<bool> done{false};
  std::atomic<int> mismatches{0}, applies{0}, bad_sizes{0};
  std::vector<std::thread> readers;
  for (int k = 0; k < 2; ++k)
    readers.emplace_back([&, k] {
      RowMat<float> y(n, d);
      const BankRouting routing = k == 0 ? BankRouting::Gathered : BankRouting::Contiguous;
      while (!done.load()) {
        bank.apply(oft::ConstMatrixView<float>(x.data(), n, d), oft::MatrixView<float>(y.data(), n, d),
                   ids, routing);
        if (max_difference(y, with_first) > tolerance<float>(64) &&
            max_difference(y, with_second) > tolerance<float>(64))
          ++mismatches;
        const Index size = bank.size();
        if (size != 3 && size != 4) ++bad_sizes;
        ++applies;
      }
    });
  for (int round = 0; round < 300; ++round) {
    bank.replace(2, ops[2 + round % 2]);
    const Index slot = bank.add(ops[4]);
    bank.remove(slot);
    if (round == 299)
      while (applies.load() < 20) std::this_thread::yield();
  }
  done = true;
  for (auto& reader : readers) reader.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(bad_sizes.load(), 0);
  EXPECT_EQ(bank.size(), 3);
}

}  // namespace
