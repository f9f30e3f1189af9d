#pragma once
// The seeds a deterministic simulation runs: its own default range, or the one in
// FLEECE_SIM_SEEDS ("COUNT" from seed 1, or "FIRST:COUNT") for a longer hunt than CI's
// (scripts/sim-soak.sh). A malformed value fails the test rather than running the default.

#include <cstdint>
#include <cstdlib>
#include <gtest/gtest.h>
#include <string>

namespace fleece::nodes::testing {

struct SeedRange {
    std::uint64_t first = 1;
    std::uint64_t count = 0;
    std::uint64_t end() const { return first + count; }
};

inline SeedRange sim_seeds(SeedRange fallback) {
    const char* env = std::getenv("FLEECE_SIM_SEEDS");
    if (!env || !*env) return fallback;
    const std::string s(env);
    const auto colon = s.find(':');
    SeedRange r;
    char* end = nullptr;
    if (colon == std::string::npos) {
        r.count = std::strtoull(s.c_str(), &end, 10);
    } else {
        r.first = std::strtoull(s.c_str(), &end, 10);
        if (end != s.c_str() + colon)
            end = nullptr;
        else
            r.count = std::strtoull(s.c_str() + colon + 1, &end, 10);
    }
    if (!end || *end != '\0' || r.count == 0) {
        ADD_FAILURE() << "FLEECE_SIM_SEEDS='" << s << "' is not COUNT or FIRST:COUNT";
        return SeedRange{1, 0};
    }
    return r;
}

} // namespace fleece::nodes::testing
