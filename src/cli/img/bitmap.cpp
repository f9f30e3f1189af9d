// img bitmap (--add | --remove | --clear | --enable | --disable | --merge SRC [-b SRC_FILE]
//             [-F SRC_FMT]) [-g GRANULARITY] [-f FMT] FILE BITMAP
//
// Changes persistent bitmaps of an image, like `qemu-img bitmap`: the image is opened
// writable through the block layer (which loads its bitmaps), the operations run in
// command-line order on the node's bitmaps, and closing the image stores them. An
// operation that fails stops the rest ("Operation OP on bitmap NAME failed: ..."), exit 1.

#include "block/dirty_bitmap.hpp"
#include "cli/img/common.hpp"
#include "cli/img/image.hpp"
#include "cli/img/size.hpp"

#include <fmt/format.h>
#include <memory>

namespace fleece::cli::img {
namespace {

using block::DirtyBitmap;

enum class Op { add, remove, clear, enable, disable, merge };

const char* op_name(Op op) {
    switch (op) {
    case Op::add:
        return "add";
    case Op::remove:
        return "remove";
    case Op::clear:
        return "clear";
    case Op::enable:
        return "enable";
    case Op::disable:
        return "disable";
    case Op::merge:
        return "merge";
    }
    return "?";
}

struct BitmapArgs {
    std::vector<Op> ops;                   // in command-line order
    std::vector<std::string> merge_source; // one per --merge, in order
    std::string granularity;
    std::string format;
    std::string source_file;
    std::string source_format;
    std::string filename;
    std::string bitmap;
};

Result<DirtyBitmap*> find(block::Node& node, const std::string& name) {
    DirtyBitmap* b = node.dirty_bitmaps().find(name);
    if (!b) return make_error(fmt::format("Dirty bitmap '{}' not found", name));
    return b;
}

Status apply(Op op, block::Node& node, const std::string& name, std::uint64_t granularity,
             block::Node* source_node, const std::string& source) {
    switch (op) {
    case Op::add: {
        if (!node.supports_persistent_bitmaps())
            return make_error(fmt::format(
                "Can't store persistent bitmaps to {}: Operation not supported", node.name()));
        if (!granularity)
            granularity = block::default_bitmap_granularity(node.limits().cluster_size);
        auto b = node.dirty_bitmaps().add(name, node.size(), granularity);
        if (!b) return b.error();
        (*b)->set_persistent(true);
        return {};
    }
    case Op::remove: {
        auto b = find(node, name);
        if (!b) return b.error();
        if (Status st = check_bitmap(**b, block::bitmap_check_busy | block::bitmap_check_readonly);
            !st)
            return st;
        node.dirty_bitmaps().remove(*b);
        return {};
    }
    case Op::clear: {
        auto b = find(node, name);
        if (!b) return b.error();
        if (Status st = check_bitmap(**b, block::bitmap_check_all); !st) return st;
        (*b)->clear();
        return {};
    }
    case Op::enable:
    case Op::disable: {
        auto b = find(node, name);
        if (!b) return b.error();
        if (Status st = check_bitmap(**b, block::bitmap_check_allow_readonly); !st) return st;
        (*b)->set_enabled(op == Op::enable);
        return {};
    }
    case Op::merge: {
        auto dst = find(node, name);
        if (!dst) return dst.error();
        if (Status st = check_bitmap(**dst, block::bitmap_check_all); !st) return st;
        auto src = find(source_node ? *source_node : node, source);
        if (!src) return src.error();
        if (Status st =
                check_bitmap(**src, block::bitmap_check_busy | block::bitmap_check_inconsistent);
            !st)
            return st;
        if (Status st = block::merge_check(**dst, **src); !st) return st;
        (*dst)->merge(**src);
        return {};
    }
    }
    return {};
}

io::Task<int> run_bitmap(BitmapArgs a, Session* s) {
    if (a.ops.empty())
        co_return fail("Need at least one of --add, --remove, --clear, --enable, --disable, or "
                       "--merge");
    if (!a.source_file.empty() && a.merge_source.empty())
        co_return fail("-b and -F require --merge");
    std::uint64_t granularity = 0;
    if (!a.granularity.empty()) {
        auto g = parse_size(a.granularity);
        if (!g) co_return fail("Invalid granularity specified");
        granularity = *g;
    }
    OpenRequest req{a.filename, a.format, true};
    auto img = co_await open_image(s, std::move(req));
    if (!img) co_return fail(img.error().message);
    std::unique_ptr<Image> source;
    if (!a.source_file.empty()) {
        OpenRequest sreq{a.source_file, a.source_format, false};
        auto src = co_await open_image(s, std::move(sreq));
        if (!src) co_return fail(src.error().message);
        source = std::move(*src);
    }
    std::size_t merge_index = 0;
    for (Op op : a.ops) {
        std::string src_name;
        if (op == Op::merge) src_name = a.merge_source[merge_index++];
        Status st = apply(op, (*img)->node(), a.bitmap, granularity,
                          source ? &source->node() : nullptr, src_name);
        if (!st)
            co_return fail(fmt::format("Operation {} on bitmap {} failed: {}", op_name(op),
                                       a.bitmap, st.error().message));
    }
    co_return 0;
}

} // namespace

void add_bitmap(CLI::App& img, Action* action) {
    auto a = std::make_shared<BitmapArgs>();
    CLI::App* cmd = img.add_subcommand("bitmap", "Add, remove, clear, enable, disable or merge "
                                                 "a persistent dirty bitmap of an image");
    auto op_flag = [&](const char* flag, Op op, const char* help) {
        cmd->add_flag_callback(
               flag, [a, op] { a->ops.push_back(op); }, help)
            ->trigger_on_parse(); // operations run in command-line order
    };
    op_flag("--add", Op::add, "Create the bitmap (enabled unless --disable follows)");
    op_flag("--remove", Op::remove, "Delete the bitmap");
    op_flag("--clear", Op::clear, "Clear every bit");
    op_flag("--enable", Op::enable, "Make the bitmap record writes");
    op_flag("--disable", Op::disable, "Stop the bitmap from recording writes");
    cmd->add_option_function<std::string>(
           "--merge",
           [a](const std::string& src) {
               a->ops.push_back(Op::merge);
               a->merge_source.push_back(src);
           },
           "Merge bitmap SRC (of this image, or of -b SRC_FILE) into BITMAP")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->trigger_on_parse();
    cmd->add_option("-g", a->granularity, "Granularity for --add (bytes, power of two)");
    cmd->add_option("-f", a->format, "Image format (default: probe)");
    cmd->add_option("-b", a->source_file, "Image holding the --merge source bitmap");
    cmd->add_option("-F", a->source_format, "Format of -b's image");
    cmd->add_option("filename", a->filename, "Image")->required();
    cmd->add_option("bitmap", a->bitmap, "Bitmap name")->required();
    cmd->callback([a, action] {
        *action = [a] {
            Session s;
            return run_and_close(s, run_bitmap(*a, &s));
        };
    });
}

} // namespace fleece::cli::img
