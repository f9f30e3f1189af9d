#include "cli/backup/target_spec.hpp"

#include <gtest/gtest.h>

namespace fleece::cli {
namespace {

using nlohmann::json;

std::string error_of(const std::string& text, const std::string& fmt = "",
                     const std::string& tls = "") {
    try {
        parse_target(text, fmt, tls);
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

TEST(TargetSpec, NbdOverTcpWithAndWithoutPort) {
    TargetSpec t = parse_target("nbd://backup.example:10900/disk0", "", "");
    EXPECT_EQ(t.kind, TargetSpec::Kind::nbd);
    EXPECT_EQ(t.server, (json{{"type", "inet"}, {"host", "backup.example"}, {"port", "10900"}}));
    EXPECT_EQ(t.export_name, "disk0");
    EXPECT_EQ(parse_target("nbd://h/e", "", "").server["port"], "10809");
    EXPECT_EQ(parse_target("nbd://[::1]:99/e", "", "").server,
              (json{{"type", "inet"}, {"host", "::1"}, {"port", "99"}}));
    EXPECT_EQ(parse_target("nbd://h", "", "").export_name, "");
}

TEST(TargetSpec, NbdOverUnixSocket) {
    TargetSpec t = parse_target("nbd+unix:///my%20export?socket=/run/t.sock", "", "");
    EXPECT_EQ(t.server, (json{{"type", "unix"}, {"path", "/run/t.sock"}}));
    EXPECT_EQ(t.export_name, "my export");
    json node = target_blockdev(t, "n");
    EXPECT_EQ(node["driver"], "nbd");
    EXPECT_EQ(node["export"], "my export");
    EXPECT_FALSE(node.contains("tls-creds"));
    EXPECT_FALSE(node.contains("reconnect-delay"));
    t.reconnect_delay_s = 120;
    EXPECT_EQ(target_blockdev(t, "n")["reconnect-delay"], 120);
    // The default export has no name.
    EXPECT_FALSE(
        target_blockdev(parse_target("nbd+unix:///?socket=/s", "", ""), "n").contains("export"));
}

TEST(TargetSpec, TlsNeedsCredentials) {
    EXPECT_NE(error_of("nbds://h/e").find("--tls-creds"), std::string::npos);
    TargetSpec t = parse_target("nbds://h/e", "", "tls0");
    EXPECT_EQ(target_blockdev(t, "n")["tls-creds"], "tls0");
    // Credentials given for a plain URI are not used.
    EXPECT_FALSE(target_blockdev(parse_target("nbd://h/e", "", "tls0"), "n").contains("tls-creds"));
}

TEST(TargetSpec, BadUrisAreRefusedWithTheReason) {
    EXPECT_NE(error_of("http://h/e").find("unknown URI scheme"), std::string::npos);
    EXPECT_NE(error_of("nbd+unix:///e").find("socket="), std::string::npos);
    EXPECT_NE(error_of("nbd+unix://host/e?socket=/s").find("no host"), std::string::npos);
    EXPECT_NE(error_of("nbd:///e").find("missing host"), std::string::npos);
    EXPECT_NE(error_of("nbd://h:port/e").find("bad port"), std::string::npos);
    EXPECT_NE(error_of("nbd://h/e", "qcow2").find("local files"), std::string::npos);
    EXPECT_NE(error_of("").find("empty"), std::string::npos);
}

TEST(TargetSpec, LocalFilesPickTheFormatByExtension) {
    TargetSpec raw = parse_target("/nonexistent-dir/b.img", "", "");
    EXPECT_EQ(raw.kind, TargetSpec::Kind::file);
    EXPECT_EQ(raw.format, "raw");
    EXPECT_EQ(
        target_blockdev(raw, "n"),
        (json{{"driver", "file"}, {"filename", "/nonexistent-dir/b.img"}, {"node-name", "n"}}));
    TargetSpec q = parse_target("/nonexistent-dir/b.qcow2", "", "");
    EXPECT_EQ(q.format, "qcow2");
    json node = target_blockdev(q, "n");
    EXPECT_EQ(node["driver"], "qcow2");
    EXPECT_EQ(node["file"]["filename"], "/nonexistent-dir/b.qcow2");
    EXPECT_EQ(parse_target("/nonexistent-dir/b", "qcow2", "").format, "qcow2");
    EXPECT_NE(error_of("/nonexistent-dir/b", "vmdk").find("raw or qcow2"), std::string::npos);
    EXPECT_NE(error_of("/dev/null").find("already exists"), std::string::npos); // char device
}

} // namespace
} // namespace fleece::cli
