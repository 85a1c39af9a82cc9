#pragma once
/// \file quant.hpp
/// QOFT: quantized frozen bases. The formats (bitsandbytes NF4/FP4 with double quantization and
/// LLM.int8, GPTQ and AWQ int4, bit for bit), the frozen-base views, the fused dequantize-GEMMs, the QOFT layer, the
/// QLoRA baseline and merging into a quantized base.
/// See docs/quant.md.
#include "quant/bnb4.hpp"
#include "quant/bnb4_double.hpp"
#include "quant/bnb_dynamic.hpp"
#include "quant/frozen_base.hpp"
#include "quant/fused_gemm.hpp"
#include "quant/int4_base.hpp"
#include "quant/int4_group.hpp"
#include "quant/int8.hpp"
#include "quant/merge.hpp"
#include "quant/qlora_linear.hpp"
#include "quant/qoft_linear.hpp"
