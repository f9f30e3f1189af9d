#include "daemon/options.hpp"

#include <gtest/gtest.h>

using namespace fleece::daemon;

TEST(DaemonOptions, ChardevMonitorBothSpellings) {
    auto o = parse_options({"--chardev", "socket,id=m0,path=/tmp/a,server=on,wait=off",
                            "--chardev=socket,id=m1,path=/tmp/b,server,nowait", "--monitor",
                            "chardev=m0,mode=control", "--monitor=m1", "--pidfile=/tmp/p",
                            "--daemonize", "--blockdev", "driver=file,node-name=a,filename=x"});
    ASSERT_TRUE(o) << o.error().message;
    ASSERT_EQ(o->chardevs.size(), 2u);
    EXPECT_EQ(o->chardevs[1].path, "/tmp/b");
    EXPECT_EQ(o->monitors, (std::vector<std::string>{"m0", "m1"}));
    EXPECT_EQ(o->pidfile, "/tmp/p");
    EXPECT_TRUE(o->daemonize);
    EXPECT_EQ(o->blockdevs.size(), 1u);
    EXPECT_TRUE(check_options(o.value()));
}

TEST(DaemonOptions, Refusals) {
    auto obj = parse_options({"--object", "tls-creds-x509,id=t"});
    ASSERT_TRUE(obj);
    EXPECT_EQ(obj->objects, (std::vector<std::string>{"tls-creds-x509,id=t"}));
    EXPECT_FALSE(parse_options({"--bogus"}));
    EXPECT_FALSE(parse_options({"--pidfile"}));
    EXPECT_FALSE(parse_options({"--chardev", "socket,id=x,path=/p,wait=on"}));
    EXPECT_FALSE(parse_options({"--chardev", "file,id=x,path=/p"}));
    auto o = parse_options({"--monitor", "nope"});
    ASSERT_TRUE(o);
    EXPECT_FALSE(check_options(o.value()));
}
