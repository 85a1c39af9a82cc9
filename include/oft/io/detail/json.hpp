#pragma once
/// \file io/detail/json.hpp
/// Strict JSON parsing for headers and index files: nlohmann_json plus what its default parser
/// lets through. Duplicate keys are forbidden by the safetensors format ("Duplicate keys are
/// disallowed. Not all parsers may respect this.") but both nlohmann (keeps the last) and the
/// reference's serde_json (keeps the last too) accept them silently, so a file could show one
/// tensor to oft and another to a second reader. A parser callback sees every key of every object
/// as it is read and refuses a repeat. Nesting is capped as it is read, so a hostile header
/// cannot make the parser build a deep tree.

#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "../errors.hpp"

namespace oft::io::detail {

/// Parses `text` as one JSON value. `where` prefixes messages (the file's name); `root` names
/// the top-level value in them ("the header"); `max_depth` caps the nesting of objects and arrays
/// (1 = a flat object). Throws format_error on invalid JSON, a duplicate key or deeper nesting.
inline nlohmann::json parse_json_strict(const std::string& where, std::string_view text,
                                        const char* root, int max_depth) {
  struct Frame {
    bool object;
    std::string label;  // how messages name this container
    std::string last_key;
    std::unordered_set<std::string> keys;
  };
  std::vector<Frame> stack;
  auto opened = [&](bool object) {
    if (static_cast<int>(stack.size()) >= max_depth)
      fail(where, root, " nests JSON deeper than the ", max_depth, " levels the format uses");
    std::string label = root;
    if (!stack.empty()) label = stack.back().object ? detail::quote_name(stack.back().last_key) : "an array in " + stack.back().label;
    stack.push_back(Frame{object, std::move(label), {}, {}});
  };
  const nlohmann::json::parser_callback_t callback =
      [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        using event_t = nlohmann::json::parse_event_t;
        switch (event) {
          case event_t::object_start: opened(true); break;
          case event_t::array_start: opened(false); break;
          case event_t::object_end:
          case event_t::array_end: stack.pop_back(); break;
          case event_t::key: {
            Frame& frame = stack.back();
            std::string key = parsed.get<std::string>();
            if (!frame.keys.insert(key).second)
              fail(where, "duplicate key ", detail::quote_name(key), " in ", frame.label,
                   " (safetensors forbids duplicate keys)");
            frame.last_key = std::move(key);
            break;
          }
          case event_t::value: break;
        }
        return true;
      };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& error) {
    fail(where, root, " is not valid JSON: ", error.what());
  }
}

/// "a number", "an object", ...: the JSON type of `value`, for messages.
inline std::string json_kind(const nlohmann::json& value) {
  const std::string name = value.type_name();
  const bool vowel = !name.empty() && std::string_view("aeiou").find(name[0]) != std::string_view::npos;
  return (vowel ? "an " : "a ") + name;
}

}  // namespace oft::io::detail
