#pragma once
// The serving classes of oft._core (serving.cpp): oft::AdapterBank for many adapters in one batch.
#include <nanobind/nanobind.h>

void bind_serving(nanobind::module_& m);
