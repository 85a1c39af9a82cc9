#!/usr/bin/env bash
# Runs every `oft` subcommand on the test fixtures and writes, per command, its exit status,
# stdout, stderr and the sha256 of every file written so far, to one manifest. Two builds of the tool
# behave the same byte for byte when their manifests are equal:
#
#   tests/tools/cli_byte_check.sh OFT_BINARY CLI_FIXTURES_DIR MANIFEST
#   diff MANIFEST_BEFORE MANIFEST_AFTER
#
# CLI_FIXTURES_DIR is what make_cli_fixtures wrote (the model directories); the adapters are
# tests/peft/fixtures/adapters. Commands run inside a scratch directory with relative paths, so
# the messages that name a path are the same wherever the check runs.
set -euo pipefail

oft="$(realpath "$1")"
bases="$(realpath "$2")"
manifest="$(realpath -m "$3")"
adapters="$(realpath "$(dirname "$0")/../peft/fixtures/adapters")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
ln -s "$bases" b
ln -s "$adapters" a
mkdir bin
ln -s "$oft" bin/oft  # run as `oft` from PATH, so --help's usage line names no build path
: > "$manifest"

# run NAME ARGS...: one command, then the sha256 of every file in the scratch directory (what it
# wrote, and what earlier commands wrote, which stay for the commands after it: unmerge reads
# what merge wrote). Listing everything, not what looks new, needs no timestamps, which are
# coarser than a fast command.
run() {
  local name="$1"
  shift
  local rc=0
  PATH="$work/bin:$PATH" oft "$@" > stdout 2> stderr || rc=$?
  {
    echo "== $name: oft $*"
    echo "exit $rc"
    echo "-- stdout"
    cat stdout
    echo "-- stderr"
    cat stderr
    echo "-- files"  # every file of the scratch directory after the command, hidden ones included
    find . -path ./b -prune -o -path ./a -prune -o -path ./bin -prune -o -type f ! -name stdout ! -name stderr -print |
      LC_ALL=C sort | while read -r f; do sha256sum "$f"; done
  } >> "$manifest"
}

run help --help
for sub in inspect merge unmerge convert; do run "help-$sub" "$sub" --help; done

for adapter in block_share coft embedding exact legacy_t5 neumann_t2 neumann_t5; do
  run "inspect-$adapter" inspect "a/$adapter"
  run "inspect-json-$adapter" inspect "a/$adapter" --json
done
run inspect-tolerance inspect a/neumann_t5 --json --tolerance 1e-4
run inspect-missing inspect a/does_not_exist
run inspect-bad-tolerance inspect a/exact --tolerance -1

for adapter in block_share coft embedding exact legacy_t5 neumann_t2 neumann_t5; do
  run "merge-$adapter" merge --base "b/base_$adapter" --adapter "a/$adapter" --out "out_merge_$adapter"
done
run unmerge-neumann_t5 unmerge --base out_merge_neumann_t5 --adapter a/neumann_t5 --out out_unmerge_neumann_t5
run merge-strength merge --base b/base_neumann_t5 --adapter a/neumann_t5 --out out_strength --strength 0.5
run merge-dtype-bf16 merge --base b/base_neumann_t5 --adapter a/neumann_t5 --out out_dtype_bf16 --dtype bf16
run merge-dtype-f16 merge --base b/base_neumann_t5 --adapter a/neumann_t5 -o out_dtype_f16 --dtype f16 -q
run merge-bf16-base merge --base b/base_bf16 --adapter a/neumann_t5 --out out_bf16
run merge-bf16-to-f32 merge --base b/base_bf16 --adapter a/neumann_t5 --out out_bf16_f32 --dtype f32
run merge-sharded merge --base b/base_sharded --adapter a/neumann_t5 --out out_sharded
run merge-sharded-f16 merge --base b/base_sharded --adapter a/neumann_t5 --out out_sharded_f16 --dtype f16
run unmerge-sharded unmerge --base out_sharded --adapter a/neumann_t5 --out out_sharded_back
run merge-prefixed merge --base b/base_prefixed --adapter a/neumann_t5 --out out_prefixed
run merge-quantized merge --base b/base_quantized --adapter a/neumann_t5 --out out_quantized
run unmerge-quantized unmerge --base out_quantized --adapter a/neumann_t5 --out out_quantized_back
run merge-quantized-config merge --base b/base_quantized_4bit --adapter a/neumann_t5 --out out_quantized_4bit
run merge-exists merge --base b/base_neumann_t5 --adapter a/neumann_t5 --out out_strength
run merge-force merge --base b/base_neumann_t5 --adapter a/neumann_t5 --out out_strength --force
run merge-wrong-model merge --base b/base_embedding --adapter a/neumann_t5 --out out_wrong
run merge-missing-base unmerge --base b/missing --adapter a/neumann_t5 -o out_missing
run merge-bad-dtype merge --base b/base_exact --adapter a/exact -o out_bad --dtype f8
run merge-nan-strength merge --base b/base_exact --adapter a/exact -o out_nan --strength nan
run merge-into-base merge --base b/base_exact --adapter a/exact -o b/base_exact --force
run merge-no-args merge

run convert-nothing convert --adapter a/block_share --out out_c0
run convert-expand convert --adapter a/block_share --out out_expand --expand-block-share --base b/base_block_share
run convert-expand-nobase convert --adapter a/block_share --out out_c1 --expand-block-share
run convert-expand-notshared convert --adapter a/exact --out out_c2 --expand-block-share --base b/base_exact
run convert-expand-coft convert --adapter a/coft --out out_c3 --expand-block-share --base b/base_coft
run convert-f32 convert --adapter a/neumann_t5 --out out_f32 --generators-dtype f32
run convert-bf16-refused convert --adapter a/neumann_t5 --out out_c4 --generators-dtype bf16
run convert-bf16 convert --adapter a/neumann_t5 --out out_bf16_gen --generators-dtype bf16 --allow-change
run convert-f16 convert --adapter a/exact --out out_f16_gen --generators-dtype f16 --allow-change
run convert-polynomial-refused convert --adapter a/legacy_t5 --out out_c5 --to-current-polynomial
run convert-polynomial convert --adapter a/legacy_t5 --out out_poly --to-current-polynomial --allow-change
run convert-polynomial-current convert --adapter a/neumann_t5 --out out_c6 --to-current-polynomial --allow-change
run convert-exists convert --adapter a/neumann_t5 --out out_f32 --generators-dtype f32
run convert-force convert --adapter a/neumann_t5 --out out_f32 --generators-dtype f32 --force
run convert-bad-dtype convert --adapter a/neumann_t5 --out out_c7 --generators-dtype f8

echo "cli_byte_check: $(grep -c '^== ' "$manifest") commands, manifest $manifest"
