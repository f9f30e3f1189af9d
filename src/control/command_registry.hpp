#pragma once
// The QMP command table. Every command is declared once, with the argument schema that the
// dispatcher checks before the handler runs, so handlers can index their arguments without
// re-validating types and every command reports bad input with the same (QEMU) wording.

#include "io/task.hpp"
#include "util/result.hpp"

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fleece::control {

enum class ArgType { str, integer, boolean, object, array, any, node_ref };

// The name QEMU uses for the type in "Parameter 'X' expects <type>".
const char* arg_type_name(ArgType type);

struct ArgSpec {
    std::string name;
    ArgType type = ArgType::any;
    bool required = false;
};

// What a handler may use besides its arguments. Kept free of daemon types so this library
// stays below the daemon in the dependency order; the daemon hangs its services off the
// opaque pointer.
class CommandRegistry;
struct CommandContext {
    // Set by the dispatcher: lets commands such as query-commands see the table.
    const CommandRegistry* registry = nullptr;
    std::function<void()> request_quit;
    std::function<void(const std::string& name, const nlohmann::json& data)> emit_event;
    void* services = nullptr;
};

// Handlers must be named coroutine functions (never capturing lambdas). `args` stays valid
// until the handler's task finishes: the dispatcher owns it across the co_await.
using CommandHandler =
    std::function<io::Task<Result<nlohmann::json>>(CommandContext&, const nlohmann::json&)>;

struct CommandSpec {
    std::string name;
    std::string summary;
    std::vector<ArgSpec> args;
    // Accept keys that are not in `args` (blockdev-add: the keys depend on the driver).
    bool open_schema = false;
    CommandHandler handler;
};

class CommandRegistry {
  public:
    // Adds a command; a second command with the same name is a programming error.
    void add(CommandSpec spec);
    const CommandSpec* find(const std::string& name) const;
    // Sorted by name.
    std::vector<const CommandSpec*> list() const;

  private:
    std::map<std::string, CommandSpec> commands_;
};

// Checks `args` (an object) against the schema. Order of checks follows QEMU: unexpected
// keys and type errors in argument order, then missing required arguments.
Status validate_args(const CommandSpec& spec, const nlohmann::json& args);

// Looks up and runs one command. `args` is taken by value so it lives in this frame while
// the handler holds a reference to it.
io::Task<Result<nlohmann::json>> dispatch(const CommandRegistry& registry, CommandContext& ctx,
                                          std::string name, nlohmann::json args);

} // namespace fleece::control
