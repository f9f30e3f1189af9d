#include "nbd/dirty_bitmap_context.hpp"

#include "block/graph.hpp"

#include <fmt/format.h>

namespace fleece::nbd {

namespace {

class DirtyBitmapContext final : public MetaContext {
  public:
    explicit DirtyBitmapContext(const block::DirtyBitmap* b)
        : bitmap_(b), name_(meta_dirty_bitmap_prefix + b->name()) {}
    const std::string& name() const override { return name_; }
    io::Task<MetaExtent> query(block::Child&, std::uint64_t offset, std::uint64_t length) override {
        MetaExtent e;
        const std::uint64_t end = offset + length;
        if (auto d = bitmap_->next_dirty(offset, end); d && d->offset == offset) {
            e.flags = state_dirty;
            e.length = d->length;
        } else {
            e.length = (d ? d->offset : std::min(end, bitmap_->disk_size())) - offset;
        }
        if (e.length == 0) e.error = block::errno_code(EINVAL); // past the bitmap's end
        co_return e;
    }

  private:
    const block::DirtyBitmap* bitmap_;
    std::string name_;
};

// The node, then what it passes its data through unchanged (filters' file, backing).
block::DirtyBitmap* find_in_chain(block::Node& node, const std::string& name) {
    for (block::Node* n = &node; n;) {
        if (block::DirtyBitmap* b = n->dirty_bitmaps().find(name)) return b;
        block::Child* next = n->child("backing");
        if (!next && dynamic_cast<block::FilterNode*>(n)) next = n->child("file");
        n = next && next->node().size() == node.size() ? &next->node() : nullptr;
    }
    return nullptr;
}

} // namespace

Result<std::vector<block::DirtyBitmap*>>
claim_export_bitmaps(block::Node& node, const std::vector<std::string>& names, bool writable) {
    std::vector<block::DirtyBitmap*> found;
    for (const std::string& name : names) {
        block::DirtyBitmap* b = find_in_chain(node, name);
        if (!b) return make_error(fmt::format("Bitmap '{}' is not found", name));
        if (Status st = check_bitmap(*b, block::bitmap_check_allow_readonly); !st)
            return st.error();
        for (const block::DirtyBitmap* f : found)
            if (f == b) return make_error(fmt::format("Bitmap '{}' is listed twice", name));
        // A read-only export promises a stable view; a recording bitmap would change under it
        // (one loaded from a read-only image cannot: its node takes no writes, as in QEMU).
        if (!writable && b->enabled() && !b->readonly())
            return make_error(
                fmt::format("Enabled bitmap '{}' incompatible with readonly export", name));
        found.push_back(b);
    }
    for (block::DirtyBitmap* b : found)
        b->set_busy(true);
    return found;
}

void release_export_bitmaps(const std::vector<block::DirtyBitmap*>& bitmaps) {
    for (block::DirtyBitmap* b : bitmaps)
        b->set_busy(false);
}

std::shared_ptr<MetaContext> make_dirty_bitmap_context(const block::DirtyBitmap* bitmap) {
    return std::make_shared<DirtyBitmapContext>(bitmap);
}

} // namespace fleece::nbd
