#pragma once
// fault-injection: a filter that fails (or delays) chosen requests, for tests of error
// paths (backup jobs, exports, CBW). See docs/nodes/fault-injection.md.

#include "block/node.hpp"
#include "nodes/registry.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

namespace fleece::nodes {

enum class FaultOp { read, write, write_zeroes, discard, flush, block_status, any };

struct FaultRule {
    FaultOp operation = FaultOp::any;
    int error = 5; // errno to return; 0 = only delay, then forward
    std::uint64_t offset = 0;
    std::optional<std::uint64_t> length; // nullopt = to the end of the disk
    bool once = false;                   // disarm after firing once
    bool armed = true;
    std::uint32_t delay_ms = 0; // latency added before the (failed or forwarded) op
    std::uint64_t fired = 0;    // how many requests this rule hit (for tests)
};

class FaultInjectionNode final : public block::FilterNode {
  public:
    FaultInjectionNode(std::string name, block::Node& child, std::vector<FaultRule> rules,
                       bool read_only = false);

    void set_rules(std::vector<FaultRule> rules) { rules_ = std::move(rules); }
    const std::vector<FaultRule>& rules() const { return rules_; }
    // False when there is no rule `index`.
    bool arm(std::size_t index, bool armed);

  protected:
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      block::ReqFlags flags) override;
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override;
    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              block::ReqFlags flags) override;
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override;
    io::Task<std::error_code> do_flush() override;
    io::Task<block::BlockStatus> do_block_status(std::uint64_t offset,
                                                 std::uint64_t length) override;

  private:
    // Applies matching rules: sleeps for their delays and returns the first error (or none).
    io::Task<std::error_code> inject(FaultOp op, std::uint64_t offset, std::uint64_t length);

    std::vector<FaultRule> rules_;
};

// Parses and validates a JSON array of rules (the `rules` option and the
// x-fault-injection-set command use the same format).
Result<std::vector<FaultRule>> parse_fault_rules(const nlohmann::json& rules);
// The node as a fault-injection node, or nullptr.
FaultInjectionNode* as_fault_injection(block::Node* node);
// Validates `rules` and replaces the node's rules (all or nothing).
Status fault_injection_set(block::Node& node, const nlohmann::json& rules);

DriverSpec fault_injection_driver();

} // namespace fleece::nodes
