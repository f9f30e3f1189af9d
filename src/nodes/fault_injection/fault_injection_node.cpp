#include "nodes/fault_injection/fault_injection_node.hpp"

#include "io/event_loop.hpp"
#include "util/align.hpp"

#include <chrono>
#include <fmt/format.h>

namespace fleece::nodes {

namespace {

constexpr std::uint64_t whole_disk = ~std::uint64_t{0};

FaultOp op_from_name(const std::string& s) {
    if (s == "read") return FaultOp::read;
    if (s == "write") return FaultOp::write;
    if (s == "write-zeroes") return FaultOp::write_zeroes;
    if (s == "discard") return FaultOp::discard;
    if (s == "flush") return FaultOp::flush;
    if (s == "block-status") return FaultOp::block_status;
    return FaultOp::any;
}

bool rule_matches(const FaultRule& r, FaultOp op, std::uint64_t offset, std::uint64_t length) {
    if (!r.armed || (r.operation != FaultOp::any && r.operation != op)) return false;
    // Flush has no range: any rule for it matches regardless of offset/length.
    if (op == FaultOp::flush) return true;
    const std::uint64_t rlen = r.length.value_or(whole_disk - std::min(r.offset, whole_disk));
    return ranges_overlap(offset, length, r.offset, rlen);
}

} // namespace

FaultInjectionNode::FaultInjectionNode(std::string name, block::Node& child,
                                       std::vector<FaultRule> rules, bool read_only)
    : FilterNode(std::move(name), "fault-injection"), rules_(std::move(rules)) {
    read_only_ = read_only;
    set_file(add_child(child, block::ChildRole::file, "file"));
    refresh_from_children();
}

bool FaultInjectionNode::arm(std::size_t index, bool armed) {
    if (index >= rules_.size()) return false;
    rules_[index].armed = armed;
    return true;
}

io::Task<std::error_code> FaultInjectionNode::inject(FaultOp op, std::uint64_t offset,
                                                     std::uint64_t length) {
    // Decide everything before sleeping: the rules may be replaced while we wait, and a
    // `once` rule must be consumed by exactly one request even when several race for it.
    std::uint32_t delay_ms = 0;
    int error = 0;
    for (FaultRule& r : rules_) {
        if (!rule_matches(r, op, offset, length)) continue;
        ++r.fired;
        if (r.once) r.armed = false;
        delay_ms += r.delay_ms;
        if (r.error != 0) {
            error = r.error;
            break;
        }
    }
    if (delay_ms) co_await io::sleep_for(std::chrono::milliseconds(delay_ms));
    co_return error ? block::errno_code(error) : std::error_code{};
}

io::Task<std::error_code>
FaultInjectionNode::do_read(std::uint64_t offset, std::span<std::byte> buf, block::ReqFlags flags) {
    if (auto e = co_await inject(FaultOp::read, offset, buf.size())) co_return e;
    co_return co_await file().read(offset, buf, flags);
}
io::Task<std::error_code> FaultInjectionNode::do_write(std::uint64_t offset,
                                                       std::span<const std::byte> buf,
                                                       block::ReqFlags flags) {
    if (auto e = co_await inject(FaultOp::write, offset, buf.size())) co_return e;
    co_return co_await file().write(offset, buf, flags);
}
io::Task<std::error_code> FaultInjectionNode::do_write_zeroes(std::uint64_t offset,
                                                              std::uint64_t length,
                                                              block::ReqFlags flags) {
    if (auto e = co_await inject(FaultOp::write_zeroes, offset, length)) co_return e;
    co_return co_await file().write_zeroes(offset, length, flags);
}
io::Task<std::error_code> FaultInjectionNode::do_discard(std::uint64_t offset,
                                                         std::uint64_t length) {
    if (auto e = co_await inject(FaultOp::discard, offset, length)) co_return e;
    co_return co_await file().discard(offset, length);
}
io::Task<std::error_code> FaultInjectionNode::do_flush() {
    if (auto e = co_await inject(FaultOp::flush, 0, 0)) co_return e;
    co_return co_await file().flush();
}
io::Task<block::BlockStatus> FaultInjectionNode::do_block_status(std::uint64_t offset,
                                                                 std::uint64_t length) {
    if (auto e = co_await inject(FaultOp::block_status, offset, length)) {
        block::BlockStatus s;
        s.error = e;
        co_return s;
    }
    co_return co_await file().block_status(offset, length);
}

Result<std::vector<FaultRule>> parse_fault_rules(const nlohmann::json& rules) {
    std::vector<FaultRule> out;
    if (rules.is_null()) return out;
    if (!rules.is_array()) return make_error("Invalid parameter type for 'rules', expected: array");
    for (std::size_t i = 0; i < rules.size(); ++i) {
        const std::string prefix = fmt::format("rules[{}].", i);
        if (!rules[i].is_object())
            return make_error(
                fmt::format("Invalid parameter type for 'rules[{}]', expected: object", i));
        OptionReader r(rules[i], prefix);
        FaultRule rule;
        rule.operation =
            op_from_name(r.choice("operation", {"read", "write", "write-zeroes", "discard", "flush",
                                                "block-status", "any"})
                             .value_or("any"));
        if (auto e = r.integer("errno")) {
            if (*e < 0 || *e > 4095)
                r.fail(fmt::format("Parameter '{}errno' expects an errno value (0-4095)", prefix));
            else
                rule.error = static_cast<int>(*e);
        }
        rule.offset = r.uint("offset").value_or(0);
        rule.length = r.uint("length");
        rule.once = r.boolean("once").value_or(false);
        rule.armed = r.boolean("armed").value_or(true);
        if (auto d = r.uint("delay-ms")) {
            if (*d > 3'600'000)
                r.fail(fmt::format("Parameter '{}delay-ms' expects at most 3600000", prefix));
            else
                rule.delay_ms = static_cast<std::uint32_t>(*d);
        }
        if (Status st = r.finish(); !st) return st.error();
        out.push_back(rule);
    }
    return out;
}

FaultInjectionNode* as_fault_injection(block::Node* node) {
    return dynamic_cast<FaultInjectionNode*>(node);
}

Status fault_injection_set(block::Node& node, const nlohmann::json& rules) {
    FaultInjectionNode* fi = as_fault_injection(&node);
    if (!fi) return make_error(fmt::format("Node '{}' is not a fault-injection node", node.name()));
    auto parsed = parse_fault_rules(rules);
    if (!parsed) return parsed.error();
    fi->set_rules(std::move(*parsed));
    return {};
}

namespace {

io::Task<Result<std::unique_ptr<block::Node>>> open_fault_injection(OpenContext& ctx,
                                                                    std::string node_name,
                                                                    const CommonOptions& common,
                                                                    OptionReader& opts) {
    const nlohmann::json* ref = opts.required_raw("file");
    const nlohmann::json* rules_json = opts.raw("rules");
    if (Status st = opts.finish(); !st) co_return st.error();
    auto rules = parse_fault_rules(rules_json ? *rules_json : nlohmann::json());
    if (!rules) co_return rules.error();
    auto child = co_await resolve_ref(ctx, *ref, "file");
    if (!child) co_return child.error();
    co_return std::unique_ptr<block::Node>(std::make_unique<FaultInjectionNode>(
        std::move(node_name), **child, std::move(*rules), common.read_only));
}

} // namespace

DriverSpec fault_injection_driver() {
    return {"fault-injection", "filter failing or delaying chosen requests (testing)",
            open_fault_injection};
}

} // namespace fleece::nodes
