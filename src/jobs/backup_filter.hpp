#pragma once
// How a backup job gets its copy-before-write filter without depending on the nodes
// library: the daemon passes a factory that builds one. The job needs the node (to insert
// it), the filter's copy engine (to share the copy bitmap) and the filter's snapshot state
// (a broken snapshot fails the job).

#include "block/block_copy.hpp"
#include "block/node.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <system_error>

namespace fleece::jobs {

struct BackupFilterRequest {
    std::string name;
    block::Node* source = nullptr;
    block::Node* target = nullptr;
    bool break_guest_write = false; // else a failed copy breaks the snapshot, not the write
    std::uint64_t min_cluster_size = 0;
    std::uint64_t timeout_s = 0; // per copy-before-write copy, 0 = none (cbw-timeout)
};

struct BackupFilter {
    std::unique_ptr<block::Node> node;
    block::BlockCopy* copy = nullptr;                // owned by the node
    std::function<std::error_code()> snapshot_error; // non-empty once the snapshot broke
};

using BackupFilterFactory = std::function<Result<BackupFilter>(const BackupFilterRequest&)>;

} // namespace fleece::jobs
