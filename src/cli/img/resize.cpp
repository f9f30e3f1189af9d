// img resize [-f FMT] [--shrink] FILE [+|-]SIZE

#include "cli/img/common.hpp"
#include "cli/img/image.hpp"
#include "cli/img/qcow2_support.hpp"
#include "cli/img/size.hpp"
#include "util/align.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <memory>
#include <unistd.h>

namespace fleece::cli::img {
namespace {

struct ResizeArgs {
    std::string format;
    bool shrink = false;
    bool quiet = false;
    std::string filename;
    std::string size;
};

io::Task<Result<std::uint64_t>> current_size(Session* s, std::string name, std::string format,
                                             std::string* found_format) {
    // Built outside co_await: GCC 12 destroys a braced temporary argument twice.
    OpenRequest img_req{name, format, false};
    auto img = co_await open_image(s, std::move(img_req));
    if (!img) co_return img.error();
    *found_format = (*img)->format();
    if ((*img)->nbd()) co_return make_error("Cannot resize an image over NBD");
    co_return (*img)->size();
}

int run_resize(const ResizeArgs& a) {
    std::string format;
    std::uint64_t old_size = 0;
    {
        // The image is opened (and probed) through the block layer, then closed before
        // the file changes size.
        Session s;
        auto size = run_and_close(s, current_size(&s, a.filename, a.format, &format));
        if (!size) return fail(size.error().message);
        old_size = *size;
    }
    auto wanted = parse_resize(a.size, old_size);
    if (!wanted) {
        if (wanted.error().message.rfind("Invalid size", 0) == 0) return fail(size_help);
        return fail(wanted.error().message);
    }
    const std::uint64_t new_size = align_up(*wanted, std::uint64_t{512});
    if (new_size < old_size && !a.shrink)
        return fail("Use the --shrink option to perform a shrink operation.");
    if (format == "qcow2") {
        if (Status st = qcow2_grow(a.filename, new_size); !st)
            return fail("Could not resize '" + a.filename + "': " + st.error().message);
        if (!a.quiet) std::cout << "Image resized.\n";
        return 0;
    }
    const int fd = ::open(a.filename.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return fail("Could not open '" + a.filename + "': " + std::strerror(errno));
    const int rc = ::ftruncate(fd, static_cast<off_t>(new_size));
    const int err = errno;
    const int sync_rc = rc == 0 ? ::fsync(fd) : 0;
    ::close(fd);
    if (rc != 0 || sync_rc != 0)
        return fail("Could not resize '" + a.filename + "': " + std::strerror(rc ? err : errno));
    if (!a.quiet) std::cout << "Image resized.\n";
    return 0;
}

} // namespace

void add_resize(CLI::App& img, Action* action) {
    auto a = std::make_shared<ResizeArgs>();
    CLI::App* cmd = img.add_subcommand("resize", "Grow or shrink an image");
    cmd->add_option("-f", a->format, "Image format (default: probe)");
    cmd->add_flag("--shrink", a->shrink,
                  "Allow making the image smaller (data past the end is lost)");
    cmd->add_flag("-q", a->quiet, "Quiet: print nothing on success");
    cmd->add_option("filename", a->filename, "Image")->required();
    cmd->add_option("size", a->size, "New size, or +SIZE / -SIZE relative to the current one")
        ->required();
    cmd->callback([a, action] { *action = [a] { return run_resize(*a); }; });
}

} // namespace fleece::cli::img
