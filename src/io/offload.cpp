#include "io/offload.hpp"

#include <thread>

namespace fleece::io {

ThreadPool& offload_pool() {
    static ThreadPool pool(std::max(2u, std::thread::hardware_concurrency()));
    return pool;
}

} // namespace fleece::io
