// img compare [-f FMT] [-F FMT] [-s] A B
// Exit codes as qemu-img: 0 identical, 1 different, 2 error.

#include "cli/img/common.hpp"
#include "cli/img/image.hpp"

#include <algorithm>
#include <cstring>
#include <iostream>
#include <memory>

namespace fleece::cli::img {
namespace {

constexpr int exit_different = 1;
constexpr int exit_error = 2;
constexpr std::uint64_t compare_chunk = 4u << 20;

struct CompareArgs {
    std::string format_a, format_b;
    bool strict = false;
    std::string a, b;
};

// qemu-img reports mismatches at 512-byte sector granularity.
std::uint64_t sector_of(std::uint64_t offset) {
    return offset & ~std::uint64_t{511};
}

int mismatch_at(std::uint64_t offset) {
    std::cout << "Content mismatch at offset " << sector_of(offset) << "!\n";
    return exit_different;
}

int io_failure(const char* what, const std::string& name, std::uint64_t offset,
               std::error_code ec) {
    return fail(std::string(what) + " '" + name + "' failed at offset " + std::to_string(offset) +
                    ": " + ec.message(),
                exit_error);
}

// Checks that [pos, end) of `img` reads as zeroes; returns an exit code, or -1 when it does.
io::Task<int> check_zero_tail(Image* img, std::uint64_t pos, std::uint64_t end) {
    std::vector<std::byte> buf(compare_chunk);
    while (pos < end) {
        const block::BlockStatus st = co_await img->io().block_status(pos, end - pos);
        if (st.error) co_return io_failure("Block status of", img->name(), pos, st.error);
        const std::uint64_t n = std::min({st.length, end - pos, compare_chunk});
        if (n == 0) co_return fail("block status made no progress", exit_error);
        if (!(st.flags & block::status_zero)) {
            std::span<std::byte> b(buf.data(), n);
            if (auto ec = co_await img->io().read(pos, b))
                co_return io_failure("Reading", img->name(), pos, ec);
            auto it =
                std::find_if(b.begin(), b.end(), [](std::byte x) { return x != std::byte{0}; });
            if (it != b.end())
                co_return mismatch_at(pos + static_cast<std::uint64_t>(it - b.begin()));
        }
        pos += n;
    }
    co_return -1;
}

io::Task<int> run_compare(CompareArgs a, Session* s) {
    // Built outside co_await: GCC 12 destroys a braced temporary argument twice.
    OpenRequest ia_req{a.a, a.format_a, false};
    auto ia = co_await open_image(s, std::move(ia_req));
    if (!ia) co_return fail(ia.error().message, exit_error);
    // Built outside co_await: GCC 12 destroys a braced temporary argument twice.
    OpenRequest ib_req{a.b, a.format_b, false};
    auto ib = co_await open_image(s, std::move(ib_req));
    if (!ib) co_return fail(ib.error().message, exit_error);
    Image& A = **ia;
    Image& B = **ib;
    if (A.size() != B.size()) {
        if (a.strict) {
            std::cout << "Strict mode: Image size mismatch!\n";
            co_return exit_different;
        }
        std::cout << "Warning: Image size mismatch!\n";
    }
    const std::uint64_t common = std::min(A.size(), B.size());
    std::vector<std::byte> buf_a(compare_chunk), buf_b(compare_chunk);
    std::uint64_t pos = 0;
    while (pos < common) {
        const std::uint64_t want = std::min(compare_chunk, common - pos);
        const block::BlockStatus sa = co_await A.io().block_status(pos, want);
        if (sa.error) co_return io_failure("Block status of", A.name(), pos, sa.error);
        const block::BlockStatus sb = co_await B.io().block_status(pos, want);
        if (sb.error) co_return io_failure("Block status of", B.name(), pos, sb.error);
        const std::uint64_t n = std::min({sa.length, sb.length, want});
        if (n == 0) co_return fail("block status made no progress", exit_error);
        if (a.strict && ((sa.depth != 0) != (sb.depth != 0))) {
            std::cout << "Strict mode: Offset " << pos << " block status mismatch!\n";
            co_return exit_different;
        }
        // Both read as zeroes: nothing to read.
        if (!((sa.flags & block::status_zero) && (sb.flags & block::status_zero))) {
            std::span<std::byte> ba(buf_a.data(), n), bb(buf_b.data(), n);
            if (auto ec = co_await A.io().read(pos, ba))
                co_return io_failure("Reading", A.name(), pos, ec);
            if (auto ec = co_await B.io().read(pos, bb))
                co_return io_failure("Reading", B.name(), pos, ec);
            if (std::memcmp(ba.data(), bb.data(), n) != 0) {
                auto [x, y] = std::mismatch(ba.begin(), ba.end(), bb.begin());
                (void)y;
                co_return mismatch_at(pos + static_cast<std::uint64_t>(x - ba.begin()));
            }
        }
        pos += n;
    }
    if (A.size() != B.size()) {
        Image* longer = A.size() > B.size() ? &A : &B;
        const int rc = co_await check_zero_tail(longer, common, longer->size());
        if (rc >= 0) co_return rc;
    }
    std::cout << "Images are identical.\n";
    co_return 0;
}

} // namespace

void add_compare(CLI::App& img, Action* action) {
    auto a = std::make_shared<CompareArgs>();
    CLI::App* cmd = img.add_subcommand("compare", "Compare the contents of two images");
    cmd->add_option("-f", a->format_a, "Format of the first image (default: probe)");
    cmd->add_option("-F", a->format_b, "Format of the second image (default: probe)");
    cmd->add_flag("-s", a->strict, "Strict: different sizes or allocation are a difference");
    cmd->add_option("image1", a->a, "First image (path or NBD URI)")->required();
    cmd->add_option("image2", a->b, "Second image (path or NBD URI)")->required();
    cmd->callback([a, action] {
        *action = [a] {
            Session s;
            return run_and_close(s, run_compare(*a, &s));
        };
    });
}

} // namespace fleece::cli::img
