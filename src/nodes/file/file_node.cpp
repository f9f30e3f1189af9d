#include "nodes/file/file_node.hpp"

#include "io/file_io.hpp"
#include "nodes/file/direct_write_order.hpp"
#include "util/align.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fleece::nodes {
namespace {

using block::errno_code;

struct FreeDeleter {
    void operator()(std::byte* p) const noexcept { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte, FreeDeleter>;

AlignedBuffer aligned_buffer(std::size_t alignment, std::size_t size) {
    // aligned_alloc wants size to be a multiple of the alignment.
    void* p = std::aligned_alloc(alignment, align_up(std::max<std::size_t>(size, 1), alignment));
    if (!p) throw std::bad_alloc();
    return AlignedBuffer(static_cast<std::byte*>(p));
}

// Probe the O_DIRECT alignment of a regular file: the smallest of 512/4096 that the kernel
// accepts for a read at offset 0. An empty file reads 0 bytes whatever the alignment, so
// it proves nothing and we take the safe 4096.
std::uint32_t probe_direct_alignment(int fd, std::uint64_t file_size) {
    if (file_size < 4096) return 4096;
    AlignedBuffer buf = aligned_buffer(4096, 4096);
    for (std::uint32_t a : {512u, 4096u}) {
        if (::pread(fd, buf.get(), a, 0) >= 0) return a;
    }
    return 4096;
}

class FileNode final : public block::Node {
  public:
    FileNode(std::string name, std::string path, int fd, std::uint64_t size, bool is_block_device,
             bool read_only, bool direct, bool no_flush, bool unmap, std::uint32_t alignment)
        : Node(std::move(name), "file"), path_(std::move(path)), fd_(fd),
          is_block_device_(is_block_device), direct_(direct), no_flush_(no_flush), unmap_(unmap) {
        set_size(size);
        read_only_ = read_only;
        caps_.write = !read_only;
        caps_.flush = true;
        // No native FUA: the block layer turns a req_fua write into write + flush.
        caps_.fua = false;
        caps_.trim = unmap;
        caps_.zero = true;
        // We answer req_no_fallback with ENOTSUP instead of writing zeroes, which is what
        // fast_zero promises.
        caps_.fast_zero = true;
        // SEEK_DATA/SEEK_HOLE only mean something on regular files.
        caps_.block_status = !is_block_device;
        limits_.request_alignment = alignment;
        limits_.preferred_alignment = std::max<std::uint32_t>(alignment, 4096);
    }
    ~FileNode() override {
        // close() normally ran already; this covers nodes destroyed without it (a failed add).
        if (fd_ >= 0) ::close(fd_);
    }

    std::string filename() const override { return path_; }
    std::optional<block::DiskIdentity> disk_identity() const override {
        struct stat st {};
        if (fd_ < 0 || is_block_device_ || ::fstat(fd_, &st) != 0) return std::nullopt;
        return block::DiskIdentity{static_cast<std::uint64_t>(st.st_size),
                                   static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
                                       st.st_mtim.tv_nsec};
    }
    bool cache_direct() const override { return direct_; }
    bool cache_no_flush() const override { return no_flush_; }

    io::Task<void> close() override {
        if (fd_ < 0) co_return;
        if (!read_only_ && !no_flush_) (void)co_await io::fdatasync(fd_);
        ::close(fd_);
        fd_ = -1;
    }

  protected:
    // O_DIRECT needs aligned offsets and lengths. Format drivers issue small metadata
    // requests (a qcow2 header, one L1 entry), so a misaligned read reads the covering
    // aligned range and a misaligned write is a read-modify-write of it, ordered against
    // the other writes by write_order_ so that no concurrent update is lost.
    bool misaligned(std::uint64_t offset, std::uint64_t length) const {
        const std::uint32_t a = limits_.request_alignment;
        return direct_ && (!is_aligned(offset, a) || !is_aligned(length, a));
    }
    bool buffer_misaligned(const void* p) const {
        return direct_ && reinterpret_cast<std::uintptr_t>(p) % limits_.request_alignment != 0;
    }
    struct Cover {
        std::uint64_t start = 0;
        std::uint64_t length = 0;
    };
    Cover cover(std::uint64_t offset, std::uint64_t length) const {
        const std::uint64_t a = limits_.request_alignment;
        const std::uint64_t start = align_down(offset, a);
        return {start, align_up(offset + length, a) - start};
    }
    // Held by every write while O_DIRECT is on (see misaligned()); nothing otherwise.
    io::Task<DirectWriteOrder::Hold> hold_for_write(std::uint64_t offset, std::uint64_t length) {
        if (!direct_) co_return DirectWriteOrder::Hold{};
        const Cover c = cover(offset, length);
        co_return co_await write_order_.write(c.start, c.length);
    }

    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      block::ReqFlags) override {
        if (misaligned(offset, buf.size()) || buffer_misaligned(buf.data())) {
            // Through an aligned copy of the covering range.
            const Cover c = direct_ ? cover(offset, buf.size()) : Cover{offset, buf.size()};
            AlignedBuffer bounce = aligned_buffer(limits_.request_alignment, c.length);
            std::span<std::byte> b(bounce.get(), c.length);
            if (auto e = co_await read_at(c.start, b)) co_return e;
            std::memcpy(buf.data(), b.data() + (offset - c.start), buf.size());
            co_return std::error_code{};
        }
        co_return co_await read_at(offset, buf);
    }

    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags) override {
        if (misaligned(offset, buf.size())) {
            const Cover c = cover(offset, buf.size());
            DirectWriteOrder::Hold held =
                co_await write_order_.read_modify_write(c.start, c.length);
            AlignedBuffer bounce = aligned_buffer(limits_.request_alignment, c.length);
            std::span<std::byte> b(bounce.get(), c.length);
            if (auto e = co_await read_at(c.start, b)) co_return e;
            std::memcpy(b.data() + (offset - c.start), buf.data(), buf.size());
            const std::int64_t r = co_await io::pwrite_full(
                fd_, std::span<const std::byte>(b.data(), b.size()), c.start);
            if (r < 0) co_return errno_code(static_cast<int>(-r));
            co_return std::error_code{};
        }
        DirectWriteOrder::Hold held = co_await hold_for_write(offset, buf.size());
        if (buffer_misaligned(buf.data())) {
            AlignedBuffer bounce = aligned_buffer(limits_.request_alignment, buf.size());
            std::memcpy(bounce.get(), buf.data(), buf.size());
            const std::int64_t r = co_await io::pwrite_full(
                fd_, std::span<const std::byte>(bounce.get(), buf.size()), offset);
            if (r < 0) co_return errno_code(static_cast<int>(-r));
        } else {
            const std::int64_t r = co_await io::pwrite_full(fd_, buf, offset);
            if (r < 0) co_return errno_code(static_cast<int>(-r));
        }
        co_return std::error_code{};
    }

    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              block::ReqFlags flags) override {
        DirectWriteOrder::Hold held = co_await hold_for_write(offset, length);
        // A hole reads as zeroes, so when unmapping is both allowed by the request and
        // enabled on the node, punching is the cheapest way to zero.
        if ((flags & block::req_may_unmap) && unmap_ && punch_supported_) {
            const std::int64_t r = co_await fallocate_forgetting(
                FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
            if (r == 0) co_return std::error_code{};
            if (!unsupported(r)) co_return errno_code(static_cast<int>(-r));
            punch_supported_ = false;
        }
        if (zero_range_supported_) {
            const std::int64_t r = co_await fallocate_forgetting(
                FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
            if (r == 0) co_return std::error_code{};
            if (!unsupported(r)) co_return errno_code(static_cast<int>(-r));
            // Remember, so that every later request does not pay a failing system call.
            zero_range_supported_ = false;
        }
        if (flags & block::req_no_fallback) co_return errno_code(ENOTSUP);
        // The fallback's writes order themselves (a misaligned one is a read-modify-write,
        // which would wait for this very hold).
        held.release();
        co_return co_await Node::do_write_zeroes(offset, length, flags);
    }

    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override {
        // discard=ignore (QEMU's default) keeps the allocation; discard is advisory, so
        // "not supported" is success too.
        if (!unmap_ || !punch_supported_) co_return std::error_code{};
        DirectWriteOrder::Hold held = co_await hold_for_write(offset, length);
        const std::int64_t r = co_await fallocate_forgetting(
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
        if (r == 0) co_return std::error_code{};
        if (unsupported(r)) {
            punch_supported_ = false;
            co_return std::error_code{};
        }
        co_return errno_code(static_cast<int>(-r));
    }

    io::Task<std::error_code> do_flush() override {
        if (no_flush_ || read_only_) co_return std::error_code{};
        const std::int64_t r = co_await io::fdatasync(fd_);
        co_return r < 0 ? errno_code(static_cast<int>(-r)) : std::error_code{};
    }

    // Format drivers (qcow2) grow their image file through this. Synchronous on purpose:
    // the new size is visible before any other request runs.
    io::Task<std::error_code> do_truncate(std::uint64_t size, block::Prealloc prealloc) override {
        if (is_block_device_) co_return errno_code(size <= this->size() ? 0 : ENOSPC);
        forget_data_region();
        if (prealloc == block::Prealloc::falloc && size > this->size() && falloc_supported_) {
            // Mode 0 allocates (as unwritten extents, which read as zeroes) and extends.
            const auto from = static_cast<off_t>(this->size());
            if (::fallocate(fd_, 0, from, static_cast<off_t>(size) - from) == 0) {
                set_size(size);
                co_return std::error_code{};
            }
            if (errno != EOPNOTSUPP && errno != ENOSYS) co_return errno_code(errno);
            falloc_supported_ = false; // e.g. a filesystem without fallocate: grow sparse
        }
        if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) co_return errno_code(errno);
        set_size(size);
        co_return std::error_code{};
    }

    io::Task<block::BlockStatus> do_block_status(std::uint64_t offset,
                                                 std::uint64_t length) override {
        block::BlockStatus s;
        s.length = length;
        s.flags = block::status_data | block::status_allocated;
        s.offset = offset; // a protocol node maps every byte to itself
        if (is_block_device_) co_return s;
        if (offset >= known_data_.start && offset < known_data_.end) {
            s.length = std::min(length, known_data_.end - offset);
            co_return s;
        }
        // lseek is a cheap metadata lookup, done inline like QEMU's file-posix does.
        const off_t data = ::lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
        if (data < 0) {
            // ENXIO: offset lies in a trailing hole (or past the current EOF, if the file
            // shrank under us): zeroes up to our size. Other errors: no information, data.
            if (errno == ENXIO) s.flags = block::status_zero | block::status_allocated;
            co_return s;
        }
        const auto d = static_cast<std::uint64_t>(data);
        if (d > offset) {
            s.flags = block::status_zero | block::status_allocated;
            s.length = std::min(length, d - offset);
            co_return s;
        }
        const off_t hole = ::lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE);
        if (hole > static_cast<off_t>(offset)) {
            s.length = std::min(length, static_cast<std::uint64_t>(hole) - offset);
            known_data_ = {offset, static_cast<std::uint64_t>(hole)};
        }
        co_return s;
    }

  private:
    // The last data region SEEK_DATA/SEEK_HOLE found. The NBD server asks for block status
    // before every structured read, and a sequential reader would otherwise pay two lseeks
    // per request. Writes only turn holes into data, so the region stays data until a hole
    // is punched or the file is truncated (forget_data_region()); calling a region data
    // that is not is always safe (it is read and sent), the reverse never happens.
    struct DataRegion {
        std::uint64_t start = 0;
        std::uint64_t end = 0;
    };
    void forget_data_region() { known_data_ = {}; }
    // A fallocate that may leave holes or unwritten extents: the region is forgotten before
    // (for later queries) and after (for a query that ran while it was in flight).
    io::Task<std::int64_t> fallocate_forgetting(int mode, std::uint64_t offset,
                                                std::uint64_t length) {
        forget_data_region();
        const std::int64_t r = co_await io::fallocate(fd_, mode, offset, length);
        forget_data_region();
        co_return r;
    }

    static bool unsupported(std::int64_t r) {
        return r == -EOPNOTSUPP || r == -ENOTTY || r == -ENOSYS;
    }

    io::Task<std::error_code> read_at(std::uint64_t offset, std::span<std::byte> buf) {
        const std::int64_t r = co_await io::pread_full(fd_, buf, offset);
        if (r < 0) co_return errno_code(static_cast<int>(-r));
        // The node's size was fixed at open; if the file shrank since, what is gone reads
        // as zeroes rather than failing the guest.
        if (static_cast<std::uint64_t>(r) < buf.size())
            std::memset(buf.data() + r, 0, buf.size() - static_cast<std::size_t>(r));
        co_return std::error_code{};
    }

    DirectWriteOrder write_order_; // see misaligned()
    DataRegion known_data_;
    std::string path_;
    int fd_;
    bool is_block_device_;
    bool direct_;
    bool no_flush_;
    bool unmap_;
    bool punch_supported_ = true;
    bool zero_range_supported_ = true;
    bool falloc_supported_ = true;
};

io::Task<Result<std::unique_ptr<block::Node>>>
open_file(OpenContext&, std::string node_name, const CommonOptions& common, OptionReader& opts) {
    const std::string path = opts.required_string("filename");
    // Accepted as QEMU spells them; every mode uses the event loop's backend.
    opts.choice("aio", {"threads", "native", "io_uring"});
    // Image locking is not implemented: fleece is the only user of its images.
    opts.choice("locking", {"auto", "on", "off"});
    if (Status st = opts.finish(); !st) co_return st.error();

    int flags = O_CLOEXEC | (common.read_only ? O_RDONLY : O_RDWR);
    if (common.cache_direct) flags |= O_DIRECT;
    const int fd = ::open(path.c_str(), flags);
    if (fd < 0)
        co_return make_error(fmt::format("Could not open '{}': {}", path, std::strerror(errno)));
    auto fail = [&](const char* what) {
        const int e = errno;
        ::close(fd);
        return make_error(fmt::format("Could not {} '{}': {}", what, path, std::strerror(e)));
    };

    struct stat st {};
    if (::fstat(fd, &st) < 0) co_return fail("stat");
    std::uint64_t size = 0;
    std::uint32_t alignment = 1;
    const bool is_block_device = S_ISBLK(st.st_mode);
    if (is_block_device) {
        if (::ioctl(fd, BLKGETSIZE64, &size) < 0) co_return fail("get size of");
        if (common.cache_direct) {
            int sector = 512;
            if (::ioctl(fd, BLKSSZGET, &sector) < 0)
                co_return fail("get the logical block size of");
            alignment = static_cast<std::uint32_t>(sector);
        }
    } else if (S_ISREG(st.st_mode)) {
        size = static_cast<std::uint64_t>(st.st_size);
        if (common.cache_direct) alignment = probe_direct_alignment(fd, size);
    } else {
        ::close(fd);
        co_return make_error(fmt::format("'{}' is not a regular file or block device", path));
    }

    co_return std::unique_ptr<block::Node>(std::make_unique<FileNode>(
        std::move(node_name), path, fd, size, is_block_device, common.read_only,
        common.cache_direct, common.cache_no_flush, common.discard == "unmap", alignment));
}

} // namespace

DriverSpec file_driver() {
    return {"file", "regular file or block device (host_device)", open_file};
}

} // namespace fleece::nodes
