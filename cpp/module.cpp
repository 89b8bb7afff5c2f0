// Python bindings of the native movers: thaw._native.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <stdexcept>
#include <string>

#include "crc32c.h"
#include "section_io.h"

namespace nb = nanobind;
using namespace nb::literals;

using ConstBytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using MutBytes = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

NB_MODULE(_native, m) {
  m.doc() = "Native movers of thaw: CRC32C and pipelined snapshot section I/O.";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const thaw::IoError& e) {
      nb::object err = nb::module_::import_("builtins").attr("OSError")(e.err, e.what());
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });

  m.def("crc32c_backend", &thaw::crc32c_backend,
        "Which CRC32C code is used: 'sse4.2' (the CPU instruction) or 'portable'.");

  m.def(
      "crc32c",
      [](ConstBytes data, uint32_t value) {
        nb::gil_scoped_release unlocked;
        return thaw::crc32c_extend(value, data.data(), data.size());
      },
      "data"_a, "value"_a = 0, "CRC32C of `data`, continuing from the CRC `value`.");

  m.def(
      "crc32c_portable",
      [](ConstBytes data, uint32_t value) {
        nb::gil_scoped_release unlocked;
        return thaw::crc32c_extend_portable(value, data.data(), data.size());
      },
      "data"_a, "value"_a = 0, "crc32c through the table-driven code, whatever the CPU.");

  m.def("crc32c_combine", &thaw::crc32c_combine, "crc_a"_a, "crc_b"_a, "len_b"_a,
        "CRC32C of A||B from crc(A), crc(B) and len(B).");

  m.def(
      "crc32c_parallel",
      [](ConstBytes data, int shards, int threads) {
        nb::gil_scoped_release unlocked;
        return thaw::crc32c_parallel(data.data(), data.size(), shards, threads);
      },
      "data"_a, "shards"_a, "threads"_a,
      "CRC32C of `data` computed as `shards` pieces on `threads` threads, then combined.");

  m.def(
      "crc32c_chunks",
      [](ConstBytes data, size_t chunk_size, int threads) {
        nb::gil_scoped_release unlocked;
        return thaw::crc32c_chunks(data.data(), data.size(), chunk_size, threads);
      },
      "data"_a, "chunk_size"_a, "threads"_a,
      "CRC32C of each chunk_size piece of `data`, on up to `threads` threads.");

  m.def(
      "read_section",
      [](const std::string& path, uint64_t offset, MutBytes dest, uint64_t padded_len,
         uint64_t chunk_size, int threads, bool direct) {
        thaw::ReadResult r;
        {
          nb::gil_scoped_release unlocked;
          r = thaw::read_section(path, offset, dest.data(), dest.size(), padded_len,
                                 chunk_size, threads, direct);
        }
        return nb::make_tuple(r.chunk_crcs, r.used_direct);
      },
      "path"_a, "offset"_a, "dest"_a, "padded_len"_a, "chunk_size"_a, "threads"_a,
      "direct"_a,
      "Reads a section's payload into `dest` (its size is the payload length); returns "
      "(chunk CRCs over the padded extent, whether O_DIRECT was used).");

  m.def(
      "check_section",
      [](const std::string& path, uint64_t offset, uint64_t padded_len, uint64_t chunk_size,
         int threads) {
        nb::gil_scoped_release unlocked;
        return thaw::check_section(path, offset, padded_len, chunk_size, threads);
      },
      "path"_a, "offset"_a, "padded_len"_a, "chunk_size"_a, "threads"_a,
      "CRCs of every chunk of a section's padded extent, reading through small buffers.");

  m.def(
      "write_section",
      [](int fd, uint64_t offset, ConstBytes src, uint64_t padded_len, uint64_t chunk_size,
         int threads, int direct_fd) {
        nb::gil_scoped_release unlocked;
        return thaw::write_section(fd, offset, src.data(), src.size(), padded_len, chunk_size,
                                   threads, direct_fd);
      },
      "fd"_a, "offset"_a, "src"_a, "padded_len"_a, "chunk_size"_a, "threads"_a,
      "direct_fd"_a = -1,
      "Writes `src` and its zero padding at `offset` of `fd` (through `direct_fd`, the same "
      "file opened with O_DIRECT, when given); returns the chunk CRCs.");

  m.def(
      "copy_section",
      [](MutBytes dest, ConstBytes src, uint64_t padded_len, uint64_t chunk_size, int threads) {
        if (dest.size() < padded_len)
          throw std::invalid_argument("copy_section: dest holds " + std::to_string(dest.size()) +
                                      " bytes, fewer than padded_len " + std::to_string(padded_len));
        nb::gil_scoped_release unlocked;
        return thaw::copy_section(dest.data(), src.data(), src.size(), padded_len, chunk_size, threads);
      },
      "dest"_a, "src"_a, "padded_len"_a, "chunk_size"_a, "threads"_a,
      "Copies `src` and its zero padding into `dest` (e.g. a shared mapping of the file) on up "
      "to `threads` threads; returns the chunk CRCs, as write_section.");
}
