#pragma once
// The model-file functions of oft._core (io.cpp), compiled where nlohmann_json is found.
#include <nanobind/nanobind.h>

void bind_io(nanobind::module_& m);
