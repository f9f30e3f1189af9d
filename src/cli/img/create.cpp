// img create -f raw|qcow2 [-b BACKING [-F FMT]] [-o OPTIONS] FILE [SIZE]

#include "cli/img/common.hpp"
#include "cli/img/create_image.hpp"
#include "cli/img/image.hpp"
#include "cli/img/size.hpp"

#include <iostream>
#include <memory>

namespace fleece::cli::img {
namespace {

struct CreateArgs {
    std::string format = "raw";
    std::string backing;
    std::string backing_format;
    std::vector<std::string> options;
    std::string filename;
    std::string size;
    bool quiet = false;
};

io::Task<Result<std::uint64_t>> backing_size(Session* s, std::string name, std::string format) {
    // Built outside co_await: GCC 12 destroys a braced temporary argument twice.
    OpenRequest img_req{name, format, false};
    auto img = co_await open_image(s, std::move(img_req));
    if (!img) co_return img.error();
    co_return (*img)->size();
}

int run_create(const CreateArgs& a) {
    if (!known_format(a.format))
        return fail(a.filename + ": Unknown file format '" + a.format + "'");
    CreateSettings s;
    s.format = a.format;
    if (!a.backing.empty() && a.format != "qcow2")
        return fail(a.filename + ": Backing file not supported for file format '" + a.format + "'");
    s.backing_file = a.backing;
    s.backing_format = a.backing_format;
    if (Status st = apply_create_options(s, a.options); !st)
        return fail(a.filename + ": " + st.error().message);
    if (!a.size.empty()) {
        auto size = parse_size(a.size);
        if (!size) return fail(size_help);
        s.size = *size;
    }
    if (!s.backing_file.empty() && !s.backing_format.empty() && !known_format(s.backing_format))
        return fail(a.filename + ": Unknown backing file format '" + s.backing_format + "'");
    if (!s.size && !s.backing_file.empty()) {
        // The new image takes the backing file's size; it is opened relative to the new
        // image's directory, as the qcow2 driver will open it.
        Session session;
        auto size =
            run_and_close(session, backing_size(&session, backing_path(a.filename, s.backing_file),
                                                s.backing_format));
        if (!size) return fail(a.filename + ": " + size.error().message);
        s.size = *size;
    }
    if (!s.size) return fail(a.filename + ": Image creation needs a size parameter");
    if (!a.quiet) std::cout << formatting_line(a.filename, s) << "\n" << std::flush;
    if (Status st = create_image(a.filename, s); !st)
        return fail(a.filename + ": " + st.error().message);
    return 0;
}

} // namespace

void add_create(CLI::App& img, Action* action) {
    auto a = std::make_shared<CreateArgs>();
    CLI::App* cmd = img.add_subcommand("create", "Create a new raw or qcow2 image");
    cmd->add_option("-f", a->format, "Image format: raw or qcow2")->default_val("raw");
    cmd->add_option("-b", a->backing, "Backing file (qcow2)");
    cmd->add_option("-F", a->backing_format, "Backing file format");
    cmd->add_option("-o", a->options, "Format options key=value[,...]")->allow_extra_args(false);
    cmd->add_flag("-q", a->quiet, "Quiet: print nothing on success");
    cmd->add_option("filename", a->filename, "Image to create")->required();
    cmd->add_option("size", a->size, "Virtual size (k, M, G, T suffixes)");
    cmd->callback([a, action] { *action = [a] { return run_create(*a); }; });
}

} // namespace fleece::cli::img
