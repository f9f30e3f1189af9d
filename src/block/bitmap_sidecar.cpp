#include "block/bitmap_sidecar.hpp"

#include "util/align.hpp"
#include "util/blocking_io.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <unistd.h>

namespace fleece::block {

namespace {

constexpr char magic[8] = {'F', 'L', 'E', 'E', 'C', 'E', 'B', 'M'};
constexpr std::uint32_t version = 2;

// Bytes, not std::string: GCC 12 reports a false -Wrestrict on string appends here.
using Bytes = std::vector<unsigned char>;
template <class T> void put(Bytes& out, T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i)
        out.push_back(
            static_cast<unsigned char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff));
}

class Reader {
  public:
    explicit Reader(const std::string& data) : d_(data) {}
    template <class T> bool get(T* v) {
        if (d_.size() - pos_ < sizeof(T)) return false;
        std::uint64_t x = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i)
            x |= static_cast<std::uint64_t>(static_cast<unsigned char>(d_[pos_ + i])) << (8 * i);
        pos_ += sizeof(T);
        *v = static_cast<T>(x);
        return true;
    }
    bool bytes(std::size_t n, std::string* out) {
        if (d_.size() - pos_ < n) return false;
        *out = d_.substr(pos_, n);
        pos_ += n;
        return true;
    }

  private:
    const std::string& d_;
    std::size_t pos_ = 0;
};

Error io_error(const std::string& what, const std::string& path) {
    return make_error(fmt::format("{} '{}': {}", what, path, std::strerror(errno)));
}

} // namespace

Result<SidecarContent> read_sidecar(const std::string& path) {
    const std::optional<std::string> file = read_whole_file(path);
    if (!file) return io_error("Cannot read bitmap sidecar", path);
    const std::string& data = *file;
    const Error bad = make_error(fmt::format("Bitmap sidecar '{}' is damaged or truncated", path));
    Reader r(data);
    std::string m;
    std::uint32_t ver = 0, state = 0, count = 0;
    SidecarContent c;
    if (!r.bytes(sizeof magic, &m) || std::memcmp(m.data(), magic, sizeof magic) != 0)
        return make_error(fmt::format("'{}' is not a fleece bitmap sidecar", path));
    if (!r.get(&ver) || (ver != 1 && ver != version) || !r.get(&state) || state > 1 ||
        !r.get(&c.disk_size))
        return bad;
    if (ver >= 2) {
        std::uint32_t flags = 0;
        DiskIdentity id;
        if (!r.get(&flags) || !r.get(&c.journal_epoch) || !r.get(&id.size) || !r.get(&id.mtime_ns))
            return bad;
        c.write_ahead = (flags & 1) != 0;
        if (flags & 2) c.identity = id;
    }
    if (!r.get(&count)) return bad;
    c.clean = state == 0;
    for (std::uint32_t i = 0; i < count; ++i) {
        SidecarContent::Entry e;
        std::uint32_t name_len = 0;
        std::uint8_t enabled = 0;
        std::uint64_t nwords = 0;
        if (!r.get(&name_len) || !r.bytes(name_len, &e.name) || !r.get(&e.granularity) ||
            !r.get(&enabled) || !r.get(&nwords))
            return bad;
        if (!check_granularity(e.granularity) ||
            nwords != (div_round_up(c.disk_size, e.granularity) + 63) / 64)
            return bad;
        e.enabled = (enabled & 1) != 0;
        e.inconsistent = (enabled & 2) != 0;
        e.words.resize(nwords);
        for (auto& w : e.words)
            if (!r.get(&w)) return bad;
        c.bitmaps.push_back(std::move(e));
    }
    return c;
}

std::vector<unsigned char> encode_sidecar(std::uint64_t disk_size, const DirtyBitmaps& bitmaps,
                                          SidecarState state) {
    Bytes out(magic, magic + sizeof magic);
    put<std::uint32_t>(out, version);
    put<std::uint32_t>(out, state.clean ? 0 : 1);
    put<std::uint64_t>(out, disk_size);
    put<std::uint32_t>(out, (state.write_ahead ? 1 : 0) | (state.identity ? 2 : 0));
    put<std::uint64_t>(out, state.journal_epoch);
    put<std::uint64_t>(out, state.identity ? state.identity->size : 0);
    put<std::int64_t>(out, state.identity ? state.identity->mtime_ns : 0);
    std::vector<const DirtyBitmap*> list;
    for (const auto& b : bitmaps.list())
        if (b->persistent()) list.push_back(b.get());
    put<std::uint32_t>(out, static_cast<std::uint32_t>(list.size()));
    for (auto it = list.rbegin(); it != list.rend(); ++it) { // oldest first: load keeps order
        const DirtyBitmap& b = **it;
        // A frozen bitmap's successor holds writes too: store their union (over-approximate).
        Bitmap bits = b.copy_bits();
        if (b.successor()) bits.merge(b.successor()->bits());
        put<std::uint32_t>(out, static_cast<std::uint32_t>(b.name().size()));
        out.insert(out.end(), b.name().begin(), b.name().end());
        put<std::uint64_t>(out, b.granularity());
        // An inconsistent bitmap must stay so across clean restarts: saving it clean would
        // turn a possible miss into a silent one.
        put<std::uint8_t>(out, (b.recording() ? 1 : 0) | (b.inconsistent() ? 2 : 0));
        put<std::uint64_t>(out, bits.words().size());
        for (std::uint64_t w : bits.words())
            put<std::uint64_t>(out, w);
    }
    return out;
}

Status write_sidecar(const std::string& path, std::uint64_t disk_size, const DirtyBitmaps& bitmaps,
                     SidecarState state) {
    return write_file_durably(path, encode_sidecar(disk_size, bitmaps, state));
}

Status write_file_durably(const std::string& path, const std::vector<unsigned char>& out) {
    return replace_file_durably(path, out.data(), out.size());
}

} // namespace fleece::block
