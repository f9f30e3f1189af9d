#include "control/builtin_commands.hpp"
#include "control/command_registry.hpp"
#include "io/event_loop.hpp"

#include <gtest/gtest.h>

using namespace fleece;
using namespace fleece::control;
using nlohmann::json;

namespace {

io::Task<Result<json>> echo(CommandContext&, const json& args) {
    co_return args;
}

CommandSpec echo_spec(bool open = false) {
    return {"echo",
            "Echo the arguments",
            {{"s", ArgType::str, true},
             {"n", ArgType::integer, false},
             {"b", ArgType::boolean, false},
             {"o", ArgType::object, false},
             {"a", ArgType::array, false},
             {"node", ArgType::node_ref, false},
             {"x", ArgType::any, false}},
            open,
            echo};
}

std::string check(const json& args, bool open = false) {
    Status st = validate_args(echo_spec(open), args);
    return st ? "" : st.error().message;
}

} // namespace

TEST(Schema, AcceptsValidArguments) {
    EXPECT_EQ(check({{"s", "x"},
                     {"n", 3},
                     {"b", true},
                     {"o", json::object()},
                     {"a", json::array()},
                     {"node", "n1"},
                     {"x", nullptr}}),
              "");
    EXPECT_EQ(check({{"s", "x"}, {"node", {{"driver", "file"}}}}), "");
}

TEST(Schema, ReportsUnexpectedMissingAndWrongType) {
    EXPECT_EQ(check({{"s", "x"}, {"zz", 1}}), "Parameter 'zz' is unexpected");
    EXPECT_EQ(check(json::object()), "Parameter 's' is missing");
    EXPECT_EQ(check({{"s", 1}}), "Parameter 's' expects string");
    EXPECT_EQ(check({{"s", "x"}, {"n", "1"}}), "Parameter 'n' expects integer");
    EXPECT_EQ(check({{"s", "x"}, {"n", 1.5}}), "Parameter 'n' expects integer");
    EXPECT_EQ(check({{"s", "x"}, {"b", 1}}), "Parameter 'b' expects boolean");
    EXPECT_EQ(check({{"s", "x"}, {"o", 1}}), "Parameter 'o' expects object");
    EXPECT_EQ(check({{"s", "x"}, {"a", 1}}), "Parameter 'a' expects array");
    EXPECT_EQ(check({{"s", "x"}, {"node", 1}}), "Parameter 'node' expects string or object");
}

TEST(Schema, OpenSchemaAcceptsExtraKeysButStillChecksDeclaredOnes) {
    EXPECT_EQ(check({{"s", "x"}, {"cache", {{"direct", true}}}}, true), "");
    EXPECT_EQ(check({{"s", 1}, {"zz", 1}}, true), "Parameter 's' expects string");
    EXPECT_EQ(check({{"zz", 1}}, true), "Parameter 's' is missing");
}

TEST(Dispatch, UnknownCommandAndHandlerResult) {
    io::EventLoop loop;
    CommandRegistry reg;
    reg.add(echo_spec());
    register_builtin_commands(reg);
    CommandContext ctx;
    auto r = loop.run_until_complete(dispatch(reg, ctx, "nope", json::object()));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().error_class, "CommandNotFound");
    EXPECT_EQ(r.error().message, "The command nope has not been found");

    auto ok = loop.run_until_complete(dispatch(reg, ctx, "echo", json{{"s", "hi"}}));
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok.value(), json({{"s", "hi"}}));

    auto bad = loop.run_until_complete(dispatch(reg, ctx, "echo", json{{"q", 1}}));
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().error_class, "GenericError");

    auto cmds = loop.run_until_complete(dispatch(reg, ctx, "query-commands", json::object()));
    ASSERT_TRUE(cmds);
    EXPECT_NE(std::find(cmds.value().begin(), cmds.value().end(), json{{"name", "echo"}}),
              cmds.value().end());
}

TEST(Dispatch, QuitCallsCallback) {
    io::EventLoop loop;
    CommandRegistry reg;
    register_builtin_commands(reg);
    bool quit = false;
    CommandContext ctx;
    ctx.request_quit = [&quit] { quit = true; };
    auto r = loop.run_until_complete(dispatch(reg, ctx, "quit", json::object()));
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value(), json::object());
    EXPECT_TRUE(quit);
}
