// img convert [-f FMT] [-O FMT] [-c] [-p] [-o OPTIONS] [-n] [-m N] SOURCE TARGET
//
// Copies SOURCE's content into TARGET through the block layer with several requests in
// flight. Holes stay holes: ranges the source reports as zero, and 4 KiB blocks of read
// data that are all zero, are skipped when the target starts out zero (a new image) and
// written as zeroes (which may unmap) otherwise.

#include "cli/img/convert.hpp"

#include "cli/img/common.hpp"
#include "cli/img/create_image.hpp"
#include "cli/img/create_options.hpp"
#include "cli/img/image.hpp"
#include "cli/img/progress.hpp"
#include "io/sync.hpp"

#include <algorithm>
#include <cstring>
#include <iostream>
#include <memory>

namespace fleece::cli::img {
namespace {

constexpr std::uint64_t chunk_size = 2u << 20;
constexpr std::uint64_t zero_detect_block = 4096;

struct ConvertArgs {
    std::string source_format;
    std::string target_format = "raw";
    bool compress = false;
    bool progress = false;
    bool no_create = false;
    bool target_is_zero = false;
    std::string cache = "writeback";
    unsigned parallel = 8;
    std::vector<std::string> options;
    std::string source, target;
};

struct ConvertJob {
    Image* source = nullptr;
    Image* target = nullptr;
    std::uint64_t size = 0;
    bool target_zeroed = false; // every byte of the target reads as zero already
    block::ReqFlags write_flags = 0;
    std::uint64_t next = 0; // next chunk to hand out
    std::uint64_t done = 0;
    Progress* progress = nullptr;
    unsigned active = 0;
    io::WaitQueue finished;
    std::string error; // first failure
};

void record_error(ConvertJob* job, const char* what, std::uint64_t offset, std::error_code ec) {
    if (job->error.empty())
        job->error = std::string("error while ") + what + " at byte " + std::to_string(offset) +
                     ": " + ec.message();
}

bool all_zero(const std::byte* p, std::size_t n) {
    // Word-wise scan; the buffers are large and this is the hot loop of sparse detection.
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w) return false;
    }
    for (; i < n; ++i)
        if (p[i] != std::byte{0}) return false;
    return true;
}

io::Task<std::error_code> write_zero_range(ConvertJob* job, std::uint64_t off, std::uint64_t len) {
    if (job->target_zeroed || len == 0) co_return std::error_code{};
    co_return co_await job->target->io().write_zeroes(off, len, block::req_may_unmap);
}

// Writes the read data of [off, off + n), leaving out blocks that are all zero.
io::Task<bool> write_data(ConvertJob* job, std::uint64_t off, const std::byte* buf,
                          std::uint64_t n) {
    std::uint64_t pos = 0;
    while (pos < n) {
        // Blocks are aligned to absolute offsets so that they match the target's clusters.
        auto block_end = [&](std::uint64_t p) {
            return std::min(n, (off + p) / zero_detect_block * zero_detect_block +
                                   zero_detect_block - off);
        };
        const bool zero = all_zero(buf + pos, block_end(pos) - pos);
        std::uint64_t end = block_end(pos);
        while (end < n && all_zero(buf + end, block_end(end) - end) == zero)
            end = block_end(end);
        if (zero) {
            if (auto ec = co_await write_zero_range(job, off + pos, end - pos)) {
                record_error(job, "writing", off + pos, ec);
                co_return false;
            }
        } else {
            std::span<const std::byte> data(buf + pos, end - pos);
            if (auto ec = co_await job->target->io().write(off + pos, data, job->write_flags)) {
                record_error(job, "writing", off + pos, ec);
                co_return false;
            }
        }
        pos = end;
    }
    co_return true;
}

io::Task<bool> copy_chunk(ConvertJob* job, std::uint64_t off, std::uint64_t len, std::byte* buf) {
    const std::uint64_t end = off + len;
    while (off < end) {
        const block::BlockStatus st = co_await job->source->io().block_status(off, end - off);
        if (st.error) {
            record_error(job, "reading block status", off, st.error);
            co_return false;
        }
        const std::uint64_t n = st.length ? std::min(st.length, end - off) : end - off;
        if (st.flags & block::status_zero) {
            if (auto ec = co_await write_zero_range(job, off, n)) {
                record_error(job, "writing", off, ec);
                co_return false;
            }
        } else {
            if (auto ec = co_await job->source->io().read(off, std::span(buf, n))) {
                record_error(job, "reading", off, ec);
                co_return false;
            }
            if (!co_await write_data(job, off, buf, n)) co_return false;
        }
        off += n;
    }
    co_return true;
}

io::Task<void> convert_worker(ConvertJob* job) {
    std::vector<std::byte> buf(chunk_size);
    while (job->error.empty() && job->next < job->size) {
        // Claiming a chunk has no co_await between the check and the update.
        const std::uint64_t off = job->next;
        const std::uint64_t len = std::min(chunk_size, job->size - off);
        job->next += len;
        if (!co_await copy_chunk(job, off, len, buf.data())) break;
        job->done += len;
        job->progress->update(job->done);
    }
    if (--job->active == 0) job->finished.notify_all();
}

io::Task<int> run_convert(ConvertArgs a, Session* s) {
    // Built outside co_await: GCC 12 destroys a braced temporary argument twice.
    OpenRequest src_req{a.source, a.source_format, false};
    auto src = co_await open_image(s, std::move(src_req));
    if (!src) co_return fail(src.error().message);
    const std::uint64_t size = (*src)->size();

    bool target_zeroed = a.target_is_zero;
    if (!a.no_create) {
        if (!known_format(a.target_format))
            co_return fail("Unknown file format '" + a.target_format + "'");
        auto loc = parse_location(a.target);
        if (!loc) co_return fail(loc.error().message);
        if (loc->nbd)
            co_return fail("Cannot create an image over NBD; use -n with an existing export");
        CreateSettings settings;
        settings.format = a.target_format;
        if (Status st = apply_create_options(settings, a.options); !st)
            co_return fail(st.error().message);
        settings.size = size;
        if (Status st = create_image(a.target, settings); !st)
            co_return fail(a.target + ": " + st.error().message);
        // A new image without a backing file reads as zeroes everywhere.
        target_zeroed = settings.backing_file.empty() && settings.preallocation != "full";
    } else if (!a.options.empty()) {
        co_return fail("-o has no effect with -n: the target already exists");
    }
    // With -n the target is opened in the -O format too (raw by default), as qemu-img does.
    // Built outside co_await: GCC 12 destroys a braced temporary argument twice.
    OpenRequest dst_req{a.target, a.target_format, true};
    dst_req.no_flush = a.cache == "unsafe";
    auto dst = co_await open_image(s, std::move(dst_req));
    if (!dst) co_return fail(dst.error().message);
    if ((*dst)->size() < size)
        co_return fail("Target image '" + a.target + "' (" + std::to_string((*dst)->size()) +
                       " bytes) is smaller than the source (" + std::to_string(size) + " bytes)");

    Progress progress(a.progress, size);
    ConvertJob job;
    job.source = src->get();
    job.target = dst->get();
    job.size = size;
    job.target_zeroed = target_zeroed;
    job.progress = &progress;
    const unsigned workers = std::clamp(a.parallel, 1u, 16u);
    job.active = workers;
    for (unsigned i = 0; i < workers; ++i)
        s->loop.spawn(convert_worker(&job));
    while (job.active > 0)
        co_await job.finished.wait();
    if (!job.error.empty()) co_return fail(job.error);
    if (auto ec = co_await job.target->io().flush())
        co_return fail("error while flushing: " + ec.message());
    progress.finish();
    co_return 0;
}

} // namespace

int convert_image(const ConvertRequest& request) {
    ConvertArgs a;
    a.source = request.source;
    a.source_format = request.source_format;
    a.target = request.target;
    a.target_format = request.target_format;
    a.progress = request.progress;
    Session s;
    return run_and_close(s, run_convert(a, &s));
}

void add_convert(CLI::App& img, Action* action) {
    auto a = std::make_shared<ConvertArgs>();
    CLI::App* cmd = img.add_subcommand("convert", "Copy an image's content into another image");
    cmd->add_option("-f", a->source_format, "Source format (default: probe)");
    cmd->add_option("-O", a->target_format, "Target format: raw or qcow2")->default_val("raw");
    cmd->add_flag("-c", a->compress, "Compress the target (qcow2)");
    cmd->add_flag("-p", a->progress, "Show a progress bar");
    cmd->add_flag("-n", a->no_create, "The target exists: do not create it");
    cmd->add_flag("--target-is-zero", a->target_is_zero,
                  "With -n: the target reads as zeroes, skip writing zeroes");
    cmd->add_option("-t", a->cache,
                    "Target cache mode: writeback (flush at the end, the default) or unsafe "
                    "(no flush, what qemu-img convert does by default)")
        ->check(CLI::IsMember({"writeback", "unsafe"}))
        ->default_val("writeback");
    cmd->add_option("-m", a->parallel, "Requests in flight (1-16)")->default_val(8);
    cmd->add_option("-o", a->options, "Target format options key=value[,...]")
        ->allow_extra_args(false);
    cmd->add_option("source", a->source, "Source image (path or NBD URI)")->required();
    cmd->add_option("target", a->target, "Target image (path, or NBD URI with -n)")->required();
    cmd->callback([a, action] {
        *action = [a] {
            if (a->compress && a->target_format != "qcow2")
                return fail("Compression not supported for this file format");
            if (a->compress) return fail("Compression (-c) is not supported yet");
            Session s;
            return run_and_close(s, run_convert(*a, &s));
        };
    });
}

} // namespace fleece::cli::img
