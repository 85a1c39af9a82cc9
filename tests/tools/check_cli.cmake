# ctest tool_cli: the `oft` binary run as a user runs it, its exit codes and output checked (the
# work itself is tested in tests/io through the library functions the tool calls). `oft inspect`
# on adapters the real PEFT wrote (tests/peft/fixtures), its JSON checked field by field, and its
# one-line refusals; `oft merge`, `unmerge` and `convert` on model directories that
# make_cli_fixtures writes. Inputs: -DOFT=<tool> -DFIXTURES=<adapters dir>
# -DMAKE_FIXTURES=<make_cli_fixtures> -DPEFT_FIXTURES=<tests/peft/fixtures> -DSCRATCH=<dir>
# -DVERSION=<oft's version>.
cmake_minimum_required(VERSION 3.25)

function(run expected_rc out_var err_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL expected_rc)
    message(FATAL_ERROR "${ARGN}: exit ${rc}, expected ${expected_rc}\nstdout: ${out}\nstderr: ${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
  set(${err_var} "${err}" PARENT_SCOPE)
endfunction()

function(expect_json json expected)
  string(JSON value GET "${json}" ${ARGN})
  if(NOT value STREQUAL expected)
    message(FATAL_ERROR "JSON ${ARGN} is '${value}', expected '${expected}'")
  endif()
endfunction()

# --version: the version of include/oft/version.hpp (CMake's PROJECT_VERSION reads it), exit 0.
run(0 out err "${OFT}" --version)
if(NOT out STREQUAL "oft ${VERSION}\n")
  message(FATAL_ERROR "oft --version printed '${out}', expected 'oft ${VERSION}'")
endif()

# The table names every module and the policy.
run(0 out err "${OFT}" inspect "${FIXTURES}/neumann_t5")
foreach(part "fc1" "fc2" "odd" "peft_neumann_branch" "T = 5 -> R_k with k = 3" "served B")
  string(FIND "${out}" "${part}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "table lacks '${part}':\n${out}")
  endif()
endforeach()

# JSON: b per module (PEFT changed it to 10 for `odd`), policy, the legacy polynomial.
run(0 json err "${OFT}" inspect "${FIXTURES}/neumann_t5" --json --tolerance 1e-4)
expect_json("${json}" "peft_neumann_branch" policy)
expect_json("${json}" "3" truncation_k)
expect_json("${json}" "odd" modules 2 name)
expect_json("${json}" "10" modules 2 block_size)
expect_json("${json}" "8" modules 0 block_size)
expect_json("${json}" "OFF" modules 0 diverges)
# What serving keeps resident: one float32 b x b block per generator.
string(JSON generators GET "${json}" modules 0 generators)
math(EXPR served "${generators} * 8 * 8 * 4")
expect_json("${json}" "${served}" modules 0 served_bytes)
string(JSON rho GET "${json}" modules 0 rho worst)
string(JSON distance GET "${json}" modules 0 distance_to_cayley worst)
if(rho LESS_EQUAL 0 OR distance LESS_EQUAL 0)
  message(FATAL_ERROR "rho ${rho} and distance ${distance} must be > 0 for a trained adapter")
endif()
run(0 json err "${OFT}" inspect "${FIXTURES}/legacy_t5" --json)
expect_json("${json}" "legacy (PEFT < 0.18)" polynomial)
expect_json("${json}" "-1" truncation_k)
run(0 json err "${OFT}" inspect "${FIXTURES}/exact" --json)
expect_json("${json}" "cayley" policy)
expect_json("${json}" "0.0" modules 0 distance_to_cayley worst)
run(0 json err "${OFT}" inspect "${FIXTURES}/embedding" --json)
expect_json("${json}" "embedding" modules 0 kind)

# Refusals: one line on stderr naming the file, exit 1; bad arguments exit non-zero from CLI11.
run(1 out err "${OFT}" inspect "${FIXTURES}/does_not_exist")
string(REGEX MATCHALL "\n" lines "${err}")
list(LENGTH lines count)
if(NOT count EQUAL 1 OR NOT err MATCHES "^oft inspect: .*does_not_exist")
  message(FATAL_ERROR "expected one line naming the missing file, got: ${err}")
endif()
execute_process(COMMAND "${OFT}" inspect "${FIXTURES}/exact" --tolerance -1 RESULT_VARIABLE rc
                OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)
  message(FATAL_ERROR "--tolerance -1 was accepted")
endif()
message(STATUS "oft inspect: all checks passed")

# oft merge / unmerge from the command line (the library is tested by tests/io/test_model_merge):
# an adapter for another model is refused in one line naming the module, exit 1, no output; an
# unknown --dtype is a CLI11 error.
set(scratch "${SCRATCH}")
file(REMOVE_RECURSE "${scratch}")
file(MAKE_DIRECTORY "${scratch}/base")
run(1 out err "${OFT}" merge --base "${scratch}/base" --adapter "${FIXTURES}/neumann_t5" --out "${scratch}/out")
string(REGEX MATCHALL "\n" lines "${err}")
list(LENGTH lines count)
if(NOT count EQUAL 1 OR NOT err MATCHES "^oft merge: .*has 0 .safetensors files")
  message(FATAL_ERROR "expected one line about the empty base, got: ${err}")
endif()
if(EXISTS "${scratch}/out")
  message(FATAL_ERROR "a refused merge left ${scratch}/out behind")
endif()
run(1 out err "${OFT}" unmerge --base "${scratch}/missing" --adapter "${FIXTURES}/neumann_t5" -o "${scratch}/out")
if(NOT err MATCHES "^oft unmerge: .*is not a directory")
  message(FATAL_ERROR "expected a line naming the missing base, got: ${err}")
endif()
execute_process(COMMAND "${OFT}" merge --base "${scratch}/base" --adapter "${FIXTURES}/exact" -o "${scratch}/o"
                        --dtype f8 RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)
  message(FATAL_ERROR "--dtype f8 was accepted")
endif()

# A merge, its unmerge and a conversion that succeed: exit 0, the summary line, the output there.
run(0 out err "${MAKE_FIXTURES}" "${PEFT_FIXTURES}" "${scratch}/bases")
run(0 out err "${OFT}" merge --base "${scratch}/bases/base_sharded" --adapter "${FIXTURES}/neumann_t5"
    --out "${scratch}/merged" --dtype bf16)
if(NOT out MATCHES "^oft merge: wrote .*merged: 7 tensors in 3 file\\(s\\), 3 adapted, 2 other files copied\n$"
   OR NOT err STREQUAL "")
  message(FATAL_ERROR "oft merge: unexpected output:\n${out}\nstderr: ${err}")
endif()
if(NOT EXISTS "${scratch}/merged/model.safetensors.index.json" OR NOT EXISTS "${scratch}/merged/1_Pooling/config.json")
  message(FATAL_ERROR "oft merge did not write the index and the other files")
endif()
run(0 out err "${OFT}" merge --base "${scratch}/bases/base_quantized" --adapter "${FIXTURES}/neumann_t5"
    -o "${scratch}/quantized" -q)
foreach(part "3 adapted" "fc1: nf4 (double quantization) requantized" "fc2: int8 requantized" "odd: fp4 requantized")
  string(FIND "${out}" "${part}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "oft merge of the quantized base lacks '${part}':\n${out}")
  endif()
endforeach()
run(0 out err "${OFT}" unmerge --base "${scratch}/quantized" --adapter "${FIXTURES}/neumann_t5" -o "${scratch}/back")
if(NOT out MATCHES "^oft unmerge: wrote ")
  message(FATAL_ERROR "oft unmerge: unexpected output:\n${out}")
endif()
run(1 out err "${OFT}" convert --adapter "${FIXTURES}/neumann_t5" --out "${scratch}/c" --generators-dtype bf16)
if(NOT err MATCHES "^oft convert: convert: the conversion changes the rotation .*--allow-change" OR EXISTS "${scratch}/c")
  message(FATAL_ERROR "oft convert without --allow-change: unexpected: ${err}")
endif()
run(0 out err "${OFT}" convert --adapter "${FIXTURES}/block_share" --out "${scratch}/c" --expand-block-share
    --base "${scratch}/bases/base_block_share")
if(NOT out MATCHES "oft convert: wrote .*c \\(largest change of an entry of R: 0\\)\n$"
   OR NOT EXISTS "${scratch}/c/adapter_model.safetensors")
  message(FATAL_ERROR "oft convert --expand-block-share: unexpected output:\n${out}")
endif()
file(REMOVE_RECURSE "${scratch}")
message(STATUS "oft merge, unmerge, convert: all checks passed")

# PEFT BOFT and HRA adapters (tests/families/fixtures/adapters, the library tested by
# tests/io/test_peft_family_adapters): inspect's table and JSON, a merge and its unmerge, and the
# refusals (--strength, convert) in one line with exit 1 and no output.
set(families "${PEFT_FIXTURES}/../../families/fixtures/adapters")
run(0 out err "${OFT}" inspect "${families}/boft")
foreach(part "PEFT BOFT adapter" "lin1" "lin2" "boft_s min/max")
  string(FIND "${out}" "${part}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the BOFT table lacks '${part}':\n${out}")
  endif()
endforeach()
run(0 json err "${OFT}" inspect "${families}/boft" --json)
expect_json("${json}" "BOFT" family)
expect_json("${json}" "2" modules 0 factors)
expect_json("${json}" "4" modules 0 blocks)
expect_json("${json}" "8" modules 1 out_features)
run(0 json err "${OFT}" inspect "${families}/hra" --json)
expect_json("${json}" "HRA" family)
expect_json("${json}" "4" modules 0 reflections)
expect_json("${json}" "ON" modules 0 apply_GS)
file(MAKE_DIRECTORY "${scratch}")
run(0 out err "${MAKE_FIXTURES}" "${PEFT_FIXTURES}" "${scratch}/bases")
foreach(family boft hra)
  run(0 out err "${OFT}" merge --base "${scratch}/bases/base_tiny_${family}" --adapter "${families}/${family}"
      -o "${scratch}/merged_${family}" -q)
  if(NOT out MATCHES "^oft merge: wrote .*merged_${family}: 4 tensors in 1 file\\(s\\), 2 adapted, 1 other files copied\n$")
    message(FATAL_ERROR "oft merge (${family}): unexpected output:\n${out}\nstderr: ${err}")
  endif()
  run(0 out err "${OFT}" unmerge --base "${scratch}/merged_${family}" --adapter "${families}/${family}"
      -o "${scratch}/back_${family}" -q)
endforeach()
run(1 out err "${OFT}" merge --base "${scratch}/bases/base_tiny_boft" --adapter "${families}/boft"
    -o "${scratch}/half" --strength 0.5)
string(REGEX MATCHALL "\n" lines "${err}")
list(LENGTH lines count)
if(NOT count EQUAL 1 OR NOT err MATCHES "^oft merge: --strength 0.5: a BOFT adapter merges at strength 1 only"
   OR EXISTS "${scratch}/half")
  message(FATAL_ERROR "oft merge --strength 0.5 of BOFT: unexpected: ${err}")
endif()
run(1 out err "${OFT}" merge --base "${scratch}/bases/base_neumann_t5" --adapter "${families}/hra"
    -o "${scratch}/wrong")
if(NOT err MATCHES "^oft merge: the base has no tensor for adapter module 'lin1'" OR EXISTS "${scratch}/wrong")
  message(FATAL_ERROR "oft merge of HRA into another model: unexpected: ${err}")
endif()
run(1 out err "${OFT}" convert --adapter "${families}/hra" --out "${scratch}/c" --generators-dtype bf16)
if(NOT err MATCHES "^oft convert: convert: .* is a PEFT HRA adapter; convert rewrites OFT adapters only"
   OR EXISTS "${scratch}/c")
  message(FATAL_ERROR "oft convert of HRA: unexpected: ${err}")
endif()
file(REMOVE_RECURSE "${scratch}")
message(STATUS "oft on BOFT and HRA adapters: all checks passed")

# Dialects (io/dialect.hpp): detection by keys, --dialect to override it, one-line refusals of an
# unknown name (exit 2), of a reader that does not fit the keys, of a file of two dialects, and
# of merging a non-PEFT dialect into a model directory. The library side is tested in
# tests/dialects (test_onetrainer_adapter.cpp).
set(dialects "${CMAKE_CURRENT_LIST_DIR}/../dialects/fixtures")
function(expect_one_line err pattern what)
  string(REGEX MATCHALL "\n" lines "${err}")
  list(LENGTH lines count)
  if(NOT count EQUAL 1 OR NOT err MATCHES "${pattern}")
    message(FATAL_ERROR "${what}: expected one line matching '${pattern}', got: ${err}")
  endif()
endfunction()
run(0 out err "${OFT}" inspect "${dialects}/onetrainer_all.safetensors")
foreach(part "OneTrainer / ComfyUI-OFTv2" "lora_unet_conv_in" "scaled" "cans" "clipped")
  string(FIND "${out}" "${part}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "OneTrainer table lacks '${part}':\n${out}")
  endif()
endforeach()
run(0 json err "${OFT}" inspect "${dialects}/onetrainer_clipped.safetensors" --json)
expect_json("${json}" "onetrainer-oft" dialect)
expect_json("${json}" "input" side)
expect_json("${json}" "lora_te1_text_model_encoder_layers_0_mlp_fc1" modules 0 name)
expect_json("${json}" "8" modules 0 block_size)
expect_json("${json}" "1" modules 0 clipped_blocks)
expect_json("${json}" "0.5" modules 0 clipped_oft)
run(0 json err "${OFT}" inspect "${dialects}/onetrainer_plain.safetensors" --json --dialect onetrainer)
expect_json("${json}" "onetrainer-oft" dialect)
# Detected, and overridden: a LyCORIS file read under kohya's constraint rule.
run(0 json err "${OFT}" inspect "${dialects}/lycoris_plain_b4.safetensors" --json)
expect_json("${json}" "lycoris-diag-oft" dialect)
run(0 json err "${OFT}" inspect "${dialects}/lycoris_plain_b4.safetensors" --json --dialect kohya)
expect_json("${json}" "kohya-oft" dialect)
# A PEFT OFT directory read as OneTrainer reads it: the trap is named.
run(0 json err "${OFT}" inspect "${FIXTURES}/exact" --json --dialect onetrainer)
expect_json("${json}" "onetrainer-oft" dialect)
string(JSON note GET "${json}" modules 0 note)
if(NOT note MATCHES "inverse")
  message(FATAL_ERROR "a PEFT adapter read as OneTrainer lacks the inverse-rotation note: ${note}")
endif()
run(2 out err "${OFT}" inspect "${dialects}/onetrainer_plain.safetensors" --dialect comfyui)
expect_one_line("${err}" "^oft inspect: unknown dialect 'comfyui' \\(known: peft-oft, .*onetrainer\\)"
                "unknown --dialect")
run(1 out err "${OFT}" inspect "${dialects}/onetrainer_plain.safetensors" --dialect lycoris)
expect_one_line("${err}" "^oft inspect: .*onetrainer_plain.safetensors: no LyCORIS diag-OFT module"
                "--dialect lycoris on a OneTrainer file")
run(1 out err "${OFT}" inspect "${FIXTURES}/exact" --dialect peft-hra)
expect_one_line("${err}" "^oft inspect: .*exact: --dialect peft-hra, but its keys are peft-oft's"
                "--dialect peft-hra on a PEFT OFT adapter")
set(scratch "${SCRATCH}")
file(REMOVE_RECURSE "${scratch}")
file(MAKE_DIRECTORY "${scratch}")
run(0 out err "${MAKE_FIXTURES}" "${PEFT_FIXTURES}" "${scratch}/bases")
run(1 out err "${OFT}" inspect "${dialects}/../../peft/fixtures/peft_reference.safetensors")
expect_one_line("${err}" "^oft inspect: .*peft_reference.safetensors: its keys match no OFT dialect"
                "a file of no dialect")
run(1 out err "${OFT}" merge --base "${scratch}/bases/base_neumann_t5" --adapter
    "${dialects}/onetrainer_plain.safetensors" -o "${scratch}/ot" --dialect onetrainer)
expect_one_line("${err}" "^oft merge: base '.*base_neumann_t5' is a folder without unet/"
                "oft merge of a OneTrainer file into a Hugging Face model directory")
run(2 out err "${OFT}" merge --base "${scratch}/bases/base_neumann_t5" --adapter "${FIXTURES}/neumann_t5"
    -o "${scratch}/ot" --dialect nope)
expect_one_line("${err}" "^oft merge: unknown dialect 'nope'" "oft merge --dialect nope")
run(0 out err "${OFT}" merge --base "${scratch}/bases/base_neumann_t5" --adapter "${FIXTURES}/neumann_t5"
    -o "${scratch}/ok" --dialect peft-oft -q)
if(EXISTS "${scratch}/ot" OR NOT EXISTS "${scratch}/ok")
  message(FATAL_ERROR "oft merge --dialect: a refused merge wrote, or the accepted one did not")
endif()
file(REMOVE_RECURSE "${scratch}")
message(STATUS "oft --dialect: all checks passed")

# ---- oft merge of LyCORIS / kohya / OneTrainer files into diffusion checkpoints (issue 30 item
# 4; io/diffusion_merge.hpp, tested bit for bit in tests/diffusion): tests/diffusion/fixtures
# (make_fixtures.py) with kohya_k4's SD 1.5 module names. Keep this block contiguous.
set(dm "${SCRATCH}/diffusion_merge")
set(diffusion "${CMAKE_CURRENT_LIST_DIR}/../diffusion/fixtures")
file(REMOVE_RECURSE "${dm}")
file(MAKE_DIRECTORY "${dm}")
run(0 out err "${OFT}" merge --base "${diffusion}/sd15_tiny.safetensors" --adapter
    "${dialects}/kohya_k4.safetensors" -o "${dm}/single.safetensors" -q)
if(NOT out MATCHES "^oft merge: wrote .*single.safetensors: kohya adapter, 7 tensors in 1 file\\(s\\), 3 adapted, 0 other files copied\n$")
  message(FATAL_ERROR "oft merge into a single file: unexpected output:\n${out}\nstderr: ${err}")
endif()
run(0 out err "${OFT}" merge --base "${diffusion}/sd15_diffusers" --adapter
    "${dialects}/kohya_k4.safetensors" -o "${dm}/folder" --blend 0.5 --dtype f32 -q)
if(NOT out MATCHES "^oft merge: wrote .*folder: kohya adapter, 5 tensors in 1 file\\(s\\), 3 adapted, 2 other files copied\n  --blend 0.5: .* = [0-9.e-]+ "
   OR NOT EXISTS "${dm}/folder/model_index.json" OR NOT EXISTS "${dm}/folder/unet/config.json")
  message(FATAL_ERROR "oft merge --blend into a diffusers folder: unexpected output:\n${out}\nstderr: ${err}")
endif()
run(1 out err "${OFT}" merge --base "${diffusion}/sd15_tiny.safetensors" --adapter
    "${dialects}/lycoris_plain_b4.safetensors" -o "${dm}/missing.safetensors")
expect_one_line("${err}" "^oft merge: the base has no tensor for adapter module 'lycoris_fc1'"
                "oft merge of another model's LyCORIS file")
run(1 out err "${OFT}" merge --base "${diffusion}/sd15_tiny.safetensors" --adapter
    "${dialects}/kohya_k4.safetensors" -o "${dm}/single.safetensors")
expect_one_line("${err}" "^oft merge: output '.*single.safetensors' exists" "oft merge onto an output")
run(1 out err "${OFT}" unmerge --base "${diffusion}/sd15_tiny.safetensors" --adapter
    "${dialects}/kohya_k4.safetensors" -o "${dm}/back.safetensors")
expect_one_line("${err}" "^oft unmerge: oft unmerge takes a PEFT adapter directory out"
                "oft unmerge of a kohya file")
execute_process(COMMAND "${OFT}" merge --base "${diffusion}/sd15_tiny.safetensors" --adapter
                "${dialects}/kohya_k4.safetensors" -o "${dm}/both.safetensors" --strength 0.5
                --blend 0.5 RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "excludes" OR EXISTS "${dm}/both.safetensors"
   OR EXISTS "${dm}/missing.safetensors" OR EXISTS "${dm}/back.safetensors")
  message(FATAL_ERROR "oft merge --strength with --blend, or a refused merge, wrote: ${rc} ${err}")
endif()
# --variant: unet/ with the fp16 variant beside the plain file is refused without it (one line
# naming --variant); with it the fp16 file is merged and the plain one left out, said on stdout.
file(COPY "${diffusion}/sd15_diffusers/" DESTINATION "${dm}/variant_base")
file(COPY_FILE "${dm}/variant_base/unet/diffusion_pytorch_model.safetensors"
     "${dm}/variant_base/unet/diffusion_pytorch_model.fp16.safetensors")
run(1 out err "${OFT}" merge --base "${dm}/variant_base" --adapter
    "${dialects}/kohya_k4.safetensors" -o "${dm}/variant_out")
expect_one_line("${err}" "^oft merge: base component '.*unet' holds its weights in 2 variants \\(plain, 'fp16'\\): pass --variant NAME"
                "oft merge of a folder with two variants")
run(0 out err "${OFT}" merge --base "${dm}/variant_base" --adapter
    "${dialects}/kohya_k4.safetensors" -o "${dm}/variant_out" --variant fp16 -q)
if(NOT out MATCHES "^oft merge: wrote .*variant_out: kohya adapter, 5 tensors in 1 file\\(s\\), 3 adapted, 2 other files copied\n  --variant fp16: left out unet/diffusion_pytorch_model.safetensors \\(another variant, unmerged\\)\n$"
   OR NOT EXISTS "${dm}/variant_out/unet/diffusion_pytorch_model.fp16.safetensors"
   OR EXISTS "${dm}/variant_out/unet/diffusion_pytorch_model.safetensors")
  message(FATAL_ERROR "oft merge --variant fp16: unexpected output:\n${out}\nstderr: ${err}")
endif()
file(REMOVE_RECURSE "${dm}")
message(STATUS "oft merge into diffusion checkpoints: all checks passed")

# ---- oft convert --to and inspect's uniform columns (issue 30 item 5; io/dialect_convert.hpp,
# tested in tests/convert). Exact conversions are written and read back; refusals are one line,
# exit 1, nothing written. Keep this block contiguous.
set(cvt "${SCRATCH}/convert_dialects")
file(REMOVE_RECURSE "${cvt}")
file(MAKE_DIRECTORY "${cvt}")
run(0 out err "${OFT}" convert --to onetrainer --adapter "${FIXTURES}/neumann_t5" --out "${cvt}/ot.safetensors")
if(NOT out MATCHES "peft-oft -> onetrainer: wrote .*ot.safetensors \\(largest change of an entry of R: 0; read back: 0\\)")
  message(FATAL_ERROR "oft convert --to onetrainer: unexpected output:\n${out}")
endif()
run(0 json err "${OFT}" inspect "${cvt}/ot.safetensors" --json)
expect_json("${json}" "onetrainer-oft" dialect)
expect_json("${json}" "input" modules 0 summary side)
run(0 out err "${OFT}" convert --to peft --adapter "${cvt}/ot.safetensors" --out "${cvt}/peft")
run(0 json err "${OFT}" inspect "${cvt}/peft" --json)
expect_json("${json}" "5" num_cayley_neumann_terms)
expect_json("${json}" "current" polynomial)
run(1 out err "${OFT}" convert --to onetrainer --adapter "${FIXTURES}/exact" --out "${cvt}/exact.safetensors")
expect_one_line("${err}" "^oft convert: convert: to onetrainer: not exact \\(module '.*': an entry of R moves by .*R\\(Q\\)\\^T.*--allow-change"
                "oft convert --to onetrainer of PEFT's exact branch")
run(1 out err "${OFT}" convert --to onetrainer --adapter "${dialects}/lycoris_plain_b4.safetensors" --out "${cvt}/l.safetensors")
expect_one_line("${err}" "^oft convert: convert: lycoris -> onetrainer: the source rotates a layer's OUTPUT channels"
                "oft convert of an output-side LyCORIS file to an input-side dialect")
run(0 out err "${OFT}" convert --to lycoris --adapter "${dialects}/kohya_alpha0.safetensors" --out "${cvt}/k.safetensors")
run(0 json err "${OFT}" inspect "${cvt}/k.safetensors" --json)
expect_json("${json}" "lycoris-diag-oft" dialect)
expect_json("${json}" "output" modules 0 summary side)
run(0 out err "${OFT}" convert --to kohya --adapter "${cvt}/k.safetensors" --out "${cvt}/back.safetensors")
run(0 json err "${OFT}" inspect "${cvt}/back.safetensors" --json)
expect_json("${json}" "kohya-oft" dialect)
run(1 out err "${OFT}" convert --to kohya --adapter "${dialects}/lycoris_plain_b4.safetensors" --out "${cvt}/lk.safetensors")
expect_one_line("${err}" "^oft convert: convert: module 'lycoris_fc1': kohya's OFT names only U-Net modules"
                "oft convert --to kohya of a module outside the U-Net")
run(2 out err "${OFT}" convert --to lycoris --adapter "${dialects}/kohya_alpha0.safetensors" --out "${cvt}/x" --dialect nope)
expect_one_line("${err}" "^oft convert: unknown dialect 'nope'" "oft convert --dialect nope")
if(EXISTS "${cvt}/exact.safetensors" OR EXISTS "${cvt}/l.safetensors" OR EXISTS "${cvt}/x" OR
   EXISTS "${cvt}/lk.safetensors")
  message(FATAL_ERROR "oft convert --to: a refused conversion wrote a file")
endif()
# inspect: every dialect's table ends with the same columns, every JSON module has "summary".
foreach(adapter "${FIXTURES}/exact" "${dialects}/kohya_alpha0.safetensors"
        "${dialects}/onetrainer_clipped.safetensors" "${dialects}/lycoris_boft_plain_b4.safetensors")
  run(0 out err "${OFT}" inspect "${adapter}")
  if(NOT out MATCHES "every dialect's terms:\n  module +side +b +binding +rho +orth. +traps")
    message(FATAL_ERROR "oft inspect ${adapter}: no uniform columns:\n${out}")
  endif()
endforeach()
run(0 json err "${OFT}" inspect "${dialects}/kohya_alpha0.safetensors" --json)
string(JSON traps GET "${json}" modules 0 summary traps)
if(NOT traps MATCHES "alpha = 0 makes R ~ I")
  message(FATAL_ERROR "kohya alpha = 0 trap missing: ${traps}")
endif()
run(0 json err "${OFT}" inspect "${FIXTURES}/exact" --json)
string(JSON traps GET "${json}" modules 0 summary traps)
if(NOT traps MATCHES "inverse rotation")
  message(FATAL_ERROR "PEFT exact-branch trap missing: ${traps}")
endif()
file(REMOVE_RECURSE "${cvt}")
message(STATUS "oft convert --to, inspect summary: all checks passed")
