#include "io/buffer_pool.hpp"

#include "util/assert.hpp"

#include <bit>
#include <cstdlib>
#include <cstring>

namespace fleece::io {

namespace {
constexpr std::size_t max_cached_bytes = 64u << 20; // keep at most this much for reuse
std::size_t class_index(std::size_t capacity) {
    return static_cast<std::size_t>(std::countr_zero(capacity / BufferPool::alignment));
}
} // namespace

Buffer& Buffer::operator=(Buffer&& o) noexcept {
    if (this != &o) {
        reset();
        pool_ = std::exchange(o.pool_, nullptr);
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
        capacity_ = std::exchange(o.capacity_, 0);
    }
    return *this;
}

void Buffer::reset() {
    if (data_) {
        pool_->give_back(data_, capacity_);
        data_ = nullptr;
        pool_ = nullptr;
        size_ = capacity_ = 0;
    }
}

BufferPool::BufferPool(std::size_t max_bytes)
    : max_bytes_(max_bytes), budget_(max_bytes), free_(48) {}

BufferPool::~BufferPool() {
    FLEECE_ASSERT(bytes_in_use() == 0);
    for (auto& list : free_)
        for (std::byte* p : list)
            std::free(p);
}

std::size_t BufferPool::capacity_for(std::size_t size) {
    return std::bit_ceil(std::max(size, alignment));
}

Task<Buffer> BufferPool::get(std::size_t size) {
    const std::size_t capacity = capacity_for(size);
    FLEECE_ASSERT(capacity <= max_bytes_);
    auto units = co_await budget_.acquire(capacity);
    std::byte* data = take_block(capacity);
    // The budget is returned by Buffer::reset -> give_back, not by the Units guard.
    units.detach();
    co_return Buffer(this, data, size, capacity);
}

std::byte* BufferPool::take_block(std::size_t capacity) {
    auto& list = free_[class_index(capacity)];
    if (!list.empty()) {
        std::byte* p = list.back();
        list.pop_back();
        cached_bytes_ -= capacity;
        return p;
    }
    void* p = std::aligned_alloc(alignment, capacity);
    FLEECE_ASSERT(p != nullptr);
    return static_cast<std::byte*>(p);
}

void BufferPool::give_back(std::byte* data, std::size_t capacity) {
    if (cached_bytes_ + capacity <= max_cached_bytes) {
        free_[class_index(capacity)].push_back(data);
        cached_bytes_ += capacity;
    } else {
        std::free(data);
    }
    budget_.release(capacity);
}

} // namespace fleece::io
