# File formats (include/oft/io/: safetensors): header-only, opt-in, so that a user of the math
# does not inherit a JSON library. Defines
#   OFT_USE_IO   option, ON by default when nlohmann_json is found
#   OFT_WITH_IO  ON when oft::io is defined
#   oft::io      INTERFACE target: oft::oft + nlohmann_json::nlohmann_json (POSIX mmap; no library)
# nlohmann_json >= 3.9 (ordered_json); Debian's nlohmann-json3-dev (3.11) provides the package.

find_package(nlohmann_json 3.9 QUIET)
option(OFT_USE_IO "Provide oft::io (safetensors reader/writer; needs nlohmann_json)" ${nlohmann_json_FOUND})
set(OFT_WITH_IO OFF)
if(OFT_USE_IO)
  if(NOT nlohmann_json_FOUND)
    message(FATAL_ERROR "oft: OFT_USE_IO=ON but nlohmann_json (>= 3.9) was not found "
                        "(Debian: nlohmann-json3-dev; or set nlohmann_json_DIR)")
  endif()
  add_library(oft_io INTERFACE)
  add_library(oft::io ALIAS oft_io)
  # `oft` may be defined after this file is included: target names resolve at generation time.
  target_link_libraries(oft_io INTERFACE oft nlohmann_json::nlohmann_json)
  set_target_properties(oft_io PROPERTIES EXPORT_NAME io)
  set(OFT_WITH_IO ON)
else()
  message(STATUS "oft: oft::io (safetensors) not provided: nlohmann_json not found or OFT_USE_IO=OFF")
endif()
