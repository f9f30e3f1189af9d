#include "control/builtin_commands.hpp"
#include "control/qmp_session.hpp"
#include "io/event_loop.hpp"

#include <gtest/gtest.h>

using namespace fleece;
using namespace fleece::control;
using nlohmann::json;

TEST(QmpSession, NegotiationThenCommands) {
    io::EventLoop loop;
    CommandRegistry reg;
    register_builtin_commands(reg);
    QmpSession s(reg, CommandContext{});
    auto r = loop.run_until_complete(s.handle(R"({"execute":"query-version","id":1})"));
    EXPECT_EQ(r["error"]["class"], "CommandNotFound");
    EXPECT_EQ(r["error"]["desc"], "Expecting capabilities negotiation with 'qmp_capabilities'");
    EXPECT_EQ(r["id"], 1);
    r = loop.run_until_complete(s.handle(R"({"execute":"qmp_capabilities"})"));
    EXPECT_EQ(r, json({{"return", json::object()}}));
    EXPECT_TRUE(s.command_mode());
    r = loop.run_until_complete(s.handle(R"({"execute":"query-version","id":"x"})"));
    EXPECT_EQ(r["return"]["qemu"]["major"], 7);
    EXPECT_EQ(r["id"], "x");
}

TEST(QmpSession, SingleQuotedStringsAreAcceptedLikeQemu) {
    io::EventLoop loop;
    CommandRegistry reg;
    register_builtin_commands(reg);
    QmpSession s(reg, CommandContext{});
    auto r = loop.run_until_complete(s.handle("{'execute': 'qmp_capabilities'}"));
    EXPECT_EQ(r, json({{"return", json::object()}}));
    r = loop.run_until_complete(s.handle(R"({'execute': 'query-version', 'id': 'a "b" \'c\''})"));
    EXPECT_EQ(r["return"]["qemu"]["major"], 7);
    EXPECT_EQ(r["id"], "a \"b\" 'c'");
}

TEST(QmpSession, EnvelopeErrors) {
    io::EventLoop loop;
    CommandRegistry reg;
    register_builtin_commands(reg);
    QmpSession s(reg, CommandContext{});
    auto desc = [&](const char* text) {
        return loop.run_until_complete(s.handle(text))["error"]["desc"].get<std::string>();
    };
    EXPECT_EQ(desc("{"), "JSON parse error, invalid JSON text");
    EXPECT_EQ(desc("[1]"), "QMP input must be a JSON object");
    EXPECT_EQ(desc("{}"), "QMP input lacks member 'execute'");
    EXPECT_EQ(desc(R"({"execute":1})"), "QMP input member 'execute' must be a string");
    EXPECT_EQ(desc(R"({"execute":"quit","foo":1})"), "QMP input member 'foo' is unexpected");
    EXPECT_EQ(desc(R"({"execute":"quit","arguments":[]})"),
              "QMP input member 'arguments' must be an object");
}
