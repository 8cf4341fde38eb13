// start_writeback: hand a file's freshly written pages to the disk now (Linux sync_file_range), so that the
// fsync a finished output needs before its rename waits only for the last pages instead of the whole file.
#include <pybind11/pybind11.h>

#include <cstdint>

#ifdef __linux__
#include <fcntl.h>
#endif

#include "modules.h"

namespace pytrain {
namespace {

namespace py = pybind11;

// Asynchronous and advisory: errors are left to the fsync that follows (it reports them), and elsewhere than
// on Linux this does nothing.
void start_writeback(int fd, int64_t offset, int64_t nbytes) {
#ifdef __linux__
    py::gil_scoped_release nogil;
    (void)sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd;
    (void)offset;
    (void)nbytes;
#endif
}

}  // namespace

void bind_writeback(py::module_& m) {
    m.def("start_writeback", &start_writeback, py::arg("fd"), py::arg("offset"), py::arg("nbytes"),
          "Start writing bytes [offset, offset + nbytes) of file descriptor `fd` to disk without waiting "
          "(sync_file_range on Linux; nothing elsewhere). Advisory: the fsync that follows reports errors.");
}

}  // namespace pytrain
