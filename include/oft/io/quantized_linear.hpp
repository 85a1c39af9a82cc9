#pragma once
// The former name of io/quantized_weights.hpp (the reader of a layer's stored weights), kept
// because README.md and older code include it.
#include "quantized_weights.hpp"
