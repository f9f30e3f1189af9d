#include "jobs/error_action.hpp"

#include <cerrno>

namespace fleece::jobs {

std::optional<ErrorAction> parse_error_action(std::string_view name) {
    if (name == "report") return ErrorAction::report;
    if (name == "ignore") return ErrorAction::ignore;
    if (name == "enospc") return ErrorAction::enospc;
    if (name == "stop") return ErrorAction::stop;
    if (name == "auto") return ErrorAction::auto_;
    return std::nullopt;
}

ErrorReaction react(ErrorAction action, std::error_code ec) {
    switch (action) {
    case ErrorAction::report:
        return ErrorReaction::report;
    case ErrorAction::ignore:
        return ErrorReaction::ignore;
    case ErrorAction::stop:
        return ErrorReaction::stop;
    case ErrorAction::enospc:
    case ErrorAction::auto_:
        return ec.value() == ENOSPC ? ErrorReaction::stop : ErrorReaction::report;
    }
    return ErrorReaction::report;
}

const char* reaction_name(ErrorReaction r) {
    switch (r) {
    case ErrorReaction::report:
        return "report";
    case ErrorReaction::ignore:
        return "ignore";
    case ErrorReaction::stop:
        return "stop";
    }
    return "report";
}

} // namespace fleece::jobs
