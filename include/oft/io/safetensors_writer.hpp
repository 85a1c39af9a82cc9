#pragma once
/// \file io/safetensors_writer.hpp
/// SafetensorsWriter: collects (name, dtype, shape, bytes) entries and metadata, then writes one
/// safetensors file atomically, or serializes it to memory.
///
/// ```cpp
/// oft::io::SafetensorsWriter writer;
/// writer.add("w", {4, 8}, weights.data());          // float* -> F32, 32 elements
/// writer.add_metadata("format", "pt");
/// writer.write("adapter_model.safetensors");       // complete file or no file
/// ```
///
/// Layout, as the reference writer (`safetensors/src/tensor.rs`, `prepare`): tensors sorted by
/// dtype, widest alignment first (decreasing io/dtype.hpp order), then by name, so every tensor
/// is naturally aligned; compact JSON with `__metadata__` first (when there is any metadata,
/// keys sorted), each entry as {"dtype", "shape", "data_offsets"}; the JSON padded with spaces to
/// a multiple of 8. For the same tensors and at most one metadata key (the reference orders
/// metadata by hash), the file is byte-identical to the reference's (tests/io checks this).
///
/// Entries are validated when added, so a bad one throws at its add() and is not kept:
/// format_error for a name that is `__metadata__`, already added or not UTF-8, for a shape
/// whose size overflows or is not whole bytes, and for a byte count that is not
/// shape x width; std::invalid_argument for null data with a non-zero byte count. The writer
/// does not copy tensor data: `data` must stay valid and unchanged until write()/serialize().
///
/// write(path) is atomic: it writes a temporary file in the destination's directory (mode 0666
/// minus the umask), fsyncs it, and renames it over `path` only when everything was written.
/// On any error the temporary file is removed and `path` is untouched (a previous file there
/// stays as it was). The directory is fsynced afterwards where the file system allows it.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "detail/utf8.hpp"
#include "dtype.hpp"
#include "errors.hpp"
#include "safetensors_header.hpp"
#include "tensor_view.hpp"

namespace oft::io {

class SafetensorsWriter {
 public:
  /// Adds tensor `name` of `dtype` and `shape` whose `bytes` bytes (C order, little-endian) are
  /// at `data`. Throws as described above; on a throw the writer is unchanged.
  SafetensorsWriter& add(std::string name, Dtype dtype, std::vector<std::uint64_t> shape, const void* data,
                         std::size_t bytes) {
    const std::string where = "SafetensorsWriter";
    const std::string tensor = "tensor " + detail::quote_name(name);
    if (name == "__metadata__")
      detail::fail(where, "the tensor name '__metadata__' is reserved for the header's metadata");
    if (const std::size_t bad = detail::utf8_error_offset(name); bad != name.size())
      detail::fail(where, "tensor name is not valid UTF-8 (bad byte at offset ", bad, ")");
    if (names_.count(name) != 0) detail::fail(where, tensor, " was already added (duplicate name)");
    std::uint64_t needed = 0;
    bool partial = false;
    if (!detail::tensor_bytes(shape, dtype, needed, partial))
      detail::fail(where, tensor, " shape ", detail::dims(shape), " of ", dtype_name(dtype),
                   partial ? std::string(" is not a whole number of bytes")
                           : oft::detail::message(": elements x ", dtype_bits(dtype), " bits overflows 64 bits"));
    if (needed != bytes)
      detail::fail(where, tensor, " shape ", detail::dims(shape), " of ", dtype_name(dtype), " needs ", needed,
                   " bytes, but ", bytes, " were given");
    if (data == nullptr && bytes != 0)
      throw std::invalid_argument(oft::detail::message("oft: ", where, ": ", tensor, " has null data for ", bytes,
                                                       " bytes"));
    names_.insert(name);
    entries_.push_back(Entry{std::move(name), dtype, std::move(shape), static_cast<const std::byte*>(data), bytes});
    return *this;
  }

  /// Adds `numel(shape)` elements of `T` at `data`, as dtype_of<T> (float -> F32, oft::float16 ->
  /// F16, ...).
  template <class T>
  SafetensorsWriter& add(std::string name, std::vector<std::uint64_t> shape, const T* data) {
    std::uint64_t bytes = 0;
    bool partial = false;
    if (!detail::tensor_bytes(shape, dtype_of<T>, bytes, partial))
      detail::fail("SafetensorsWriter", "tensor ", detail::quote_name(name), " shape ", detail::dims(shape), " of ",
                   dtype_name(dtype_of<T>), ": elements x ", dtype_bits(dtype_of<T>), " bits overflows 64 bits");
    return add(std::move(name), dtype_of<T>, std::move(shape), data, static_cast<std::size_t>(bytes));
  }
  /// The same from a vector, whose size must be numel(shape).
  template <class T>
  SafetensorsWriter& add(std::string name, std::vector<std::uint64_t> shape, const std::vector<T>& values) {
    return add(std::move(name), dtype_of<T>, std::move(shape), values.data(), values.size() * sizeof(T));
  }
  /// Adds a tensor read from another file (no copy: its file must stay open until written).
  SafetensorsWriter& add(const TensorView& view) { return add(view.name, view); }
  SafetensorsWriter& add(std::string name, const TensorView& view) {
    return add(std::move(name), view.dtype, view.shape, view.data, view.bytes);
  }

  /// Adds a tensor whose bytes are produced only while write(path, fill) runs: fill(name, out,
  /// bytes) must write all `bytes` bytes of tensor `name` at `out`. The tensors are filled one at a
  /// time, in file order, into one reused buffer, so a file of N tensors is written with the
  /// memory of its largest deferred tensor (oft merge streams a model this way). Validated as
  /// add() does.
  SafetensorsWriter& add_deferred(std::string name, Dtype dtype, std::vector<std::uint64_t> shape) {
    std::uint64_t bytes = 0;
    bool partial = false;
    if (!detail::tensor_bytes(shape, dtype, bytes, partial) || partial)
      detail::fail("SafetensorsWriter", "tensor ", detail::quote_name(name), " shape ", detail::dims(shape), " of ",
                   dtype_name(dtype), partial ? " is not a whole number of bytes" : " overflows 64 bits");
    static const std::byte placeholder{};
    add(std::move(name), dtype, std::move(shape), &placeholder, static_cast<std::size_t>(bytes));
    entries_.back().deferred = true;
    entries_.back().data = nullptr;
    return *this;
  }

  /// Adds one `__metadata__` entry. Throws format_error for a repeated key or non-UTF-8 text.
  SafetensorsWriter& add_metadata(std::string key, std::string value) {
    const std::string where = "SafetensorsWriter";
    if (detail::utf8_error_offset(key) != key.size() || detail::utf8_error_offset(value) != value.size())
      detail::fail(where, "metadata key or value is not valid UTF-8");
    if (metadata_.count(key) != 0)
      detail::fail(where, "metadata key ", detail::quote_name(key), " was already added (value ",
                   detail::quote_name(metadata_.at(key)), ")");
    metadata_.emplace(std::move(key), std::move(value));
    return *this;
  }

  std::size_t size() const noexcept { return entries_.size(); }

  /// The header as written: N bytes of JSON padded with spaces to a multiple of 8.
  /// Throws format_error when it would exceed the 100,000,000-byte limit readers enforce.
  std::string header() const {
    nlohmann::ordered_json json = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [key, value] : metadata_) meta[key] = value;
      json["__metadata__"] = std::move(meta);
    }
    std::uint64_t offset = 0;
    for (const Entry* e : layout()) {
      nlohmann::ordered_json entry = nlohmann::ordered_json::object();
      entry["dtype"] = std::string(dtype_name(e->dtype));
      entry["shape"] = e->shape;
      entry["data_offsets"] = {offset, offset + e->bytes};
      json[e->name] = std::move(entry);
      offset += e->bytes;
    }
    std::string text = json.dump();
    text.resize((text.size() + 7) / 8 * 8, ' ');
    if (text.size() > kMaxHeaderBytes)
      detail::fail("SafetensorsWriter", "the header would be ", text.size(), " bytes, over the ", kMaxHeaderBytes,
                   "-byte limit of safetensors readers");
    return text;
  }

  /// The whole file in memory (no deferred tensors).
  std::vector<std::byte> serialize() const {
    require_no_deferred("serialize()");
    const std::string head = header();
    std::vector<std::byte> out;
    out.reserve(8 + head.size() + data_bytes());
    const auto append = [&out](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::byte*>(p);
      out.insert(out.end(), b, b + n);
    };
    const auto length = le64(head.size());
    append(length.data(), length.size());
    append(head.data(), head.size());
    for (const Entry* e : layout())
      if (e->bytes != 0) append(e->data, e->bytes);
    return out;
  }

  /// Writes the file to `path` atomically (see above). Throws std::system_error naming the path
  /// on an I/O error, format_error for an oversized header; either way nothing is left behind.
  void write(const std::filesystem::path& path) const {
    require_no_deferred("write(path)");
    write(path, Fill{});
  }

  /// Fills a deferred tensor: fill(name, out, bytes).
  using Fill = std::function<void(const std::string& name, std::byte* out, std::size_t bytes)>;

  /// Writes the file as write(path) does, producing each deferred tensor with `fill` when its
  /// turn comes. An exception from `fill` leaves no file behind, as any other error.
  void write(const std::filesystem::path& path, const Fill& fill) const {
    const std::string head = header();  // may throw before any file exists
    if (!path.has_filename())
      throw std::invalid_argument(oft::detail::message("oft: SafetensorsWriter: '", path.string(),
                                                       "' names no file"));
    TempFile temp(path);
    const auto length = le64(head.size());
    temp.write(length.data(), length.size());
    temp.write(head.data(), head.size());
    std::vector<std::byte> buffer;  // reused by every deferred tensor
    for (const Entry* e : layout()) {
      if (e->bytes == 0) continue;
      if (!e->deferred) {
        temp.write(e->data, e->bytes);
        continue;
      }
      if (buffer.size() < e->bytes) buffer.resize(e->bytes);
      fill(e->name, buffer.data(), e->bytes);
      temp.write(buffer.data(), e->bytes);
    }
    temp.commit();
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<std::uint64_t> shape;
    const std::byte* data;
    std::size_t bytes;
    bool deferred = false;  ///< bytes come from write(path, fill)
  };

  void require_no_deferred(const char* call) const {
    for (const Entry& e : entries_)
      if (e.deferred)
        throw std::logic_error(oft::detail::message("oft: SafetensorsWriter: ", call, " cannot produce deferred tensor ",
                                                    detail::quote_name(e.name), "; use write(path, fill)"));
  }

  static std::array<unsigned char, 8> le64(std::uint64_t value) noexcept {
    std::array<unsigned char, 8> bytes{};
    for (std::size_t i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
    return bytes;
  }

  // The reference's order: dtype descending (widest alignment first), then name.
  std::vector<const Entry*> layout() const {
    std::vector<const Entry*> order;
    order.reserve(entries_.size());
    for (const Entry& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
      if (a->dtype != b->dtype) return a->dtype > b->dtype;
      return a->name < b->name;
    });
    return order;
  }

  std::uint64_t data_bytes() const noexcept {
    std::uint64_t total = 0;
    for (const Entry& e : entries_) total += e.bytes;
    return total;
  }

  // A temporary file next to the destination, removed unless commit() renamed it into place.
  class TempFile {
   public:
    explicit TempFile(const std::filesystem::path& destination) : destination_(destination) {
      static std::atomic<unsigned> counter{0};
      const std::filesystem::path directory =
          destination.has_parent_path() ? destination.parent_path() : std::filesystem::path(".");
      for (int attempt = 0;; ++attempt) {
        path_ = directory / oft::detail::message(".", destination.filename().string(), ".oft-tmp-",
                                                 static_cast<long>(::getpid()), "-", counter++);
        do {
          fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        } while (fd_ < 0 && errno == EINTR);
        if (fd_ >= 0) break;
        if (errno != EEXIST || attempt == 100) detail::fail_errno("cannot create a temporary file for", destination);
      }
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    ~TempFile() {
      if (fd_ >= 0) ::close(fd_);
      if (!committed_) ::unlink(path_.c_str());
    }

    void write(const void* data, std::size_t n) {
      const auto* p = static_cast<const char*>(data);
      while (n > 0) {
        // Linux writes at most 0x7ffff000 bytes a call; partial writes are retried.
        const ::ssize_t done = ::write(fd_, p, std::min<std::size_t>(n, std::size_t{1} << 30));
        if (done < 0) {
          if (errno == EINTR) continue;
          detail::fail_errno("cannot write", destination_);
        }
        p += done;
        n -= static_cast<std::size_t>(done);
      }
    }

    void commit() {
      if (::fsync(fd_) != 0) detail::fail_errno("cannot flush (fsync)", destination_);
      const int fd = fd_;
      fd_ = -1;
      if (::close(fd) != 0) detail::fail_errno("cannot close", destination_);
      if (::rename(path_.c_str(), destination_.c_str()) != 0) detail::fail_errno("cannot rename into", destination_);
      committed_ = true;
      // Make the rename itself durable. Best effort: some file systems refuse fsync on a directory.
      const std::filesystem::path directory =
          destination_.has_parent_path() ? destination_.parent_path() : std::filesystem::path(".");
      const int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dir >= 0) {
        (void)::fsync(dir);
        ::close(dir);
      }
    }

   private:
    std::filesystem::path destination_;
    std::filesystem::path path_;
    int fd_ = -1;
    bool committed_ = false;
  };

  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace oft::io
