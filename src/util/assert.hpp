#pragma once
// Assertions stay on in every build: a broken invariant in a storage engine must stop the
// process before it writes wrong data, not after.

#include <cstdio>
#include <cstdlib>

namespace fleece::detail {
[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line,
                                     const char* func) {
    std::fprintf(stderr, "fleece: assertion failed: %s (%s:%d in %s)\n", expr, file, line, func);
    std::fflush(stderr);
    std::abort();
}
} // namespace fleece::detail

#define FLEECE_ASSERT(cond)                                                                        \
    do {                                                                                           \
        if (!(cond)) [[unlikely]]                                                                  \
            ::fleece::detail::assert_fail(#cond, __FILE__, __LINE__, __func__);                    \
    } while (0)
