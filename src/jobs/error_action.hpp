#pragma once
// Block job error actions (on-source-error / on-target-error), QEMU's BlockdevOnError.

#include "util/result.hpp"

#include <optional>
#include <string_view>
#include <system_error>

namespace fleece::jobs {

enum class ErrorAction { report, ignore, enospc, stop, auto_ };
// What the job does about one error: fail, retry at once, or pause until resumed.
enum class ErrorReaction { report, ignore, stop };

std::optional<ErrorAction> parse_error_action(std::string_view name);
// enospc and auto stop on ENOSPC and report anything else.
ErrorReaction react(ErrorAction action, std::error_code ec);
const char* reaction_name(ErrorReaction r); // "report", "ignore", "stop"

} // namespace fleece::jobs
