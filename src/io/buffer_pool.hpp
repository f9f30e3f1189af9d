#pragma once
// A bounded pool of aligned I/O buffers. Alignment suits O_DIRECT (4096); the byte budget
// bounds the memory that in-flight requests may pin, and get() waits when it is spent.

#include "io/sync.hpp"
#include "io/task.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace fleece::io {

class BufferPool;

class Buffer {
  public:
    Buffer() = default;
    Buffer(BufferPool* pool, std::byte* data, std::size_t size, std::size_t capacity)
        : pool_(pool), data_(data), size_(size), capacity_(capacity) {}
    Buffer(Buffer&& o) noexcept
        : pool_(std::exchange(o.pool_, nullptr)), data_(std::exchange(o.data_, nullptr)),
          size_(std::exchange(o.size_, 0)), capacity_(std::exchange(o.capacity_, 0)) {}
    Buffer& operator=(Buffer&& o) noexcept;
    ~Buffer() { reset(); }

    std::byte* data() const { return data_; }
    std::size_t size() const { return size_; }
    std::span<std::byte> span() const { return {data_, size_}; }
    explicit operator bool() const { return data_ != nullptr; }
    void reset();

  private:
    BufferPool* pool_ = nullptr;
    std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

class BufferPool {
  public:
    static constexpr std::size_t alignment = 4096;

    explicit BufferPool(std::size_t max_bytes);
    ~BufferPool();
    BufferPool(const BufferPool&) = delete;
    BufferPool& operator=(const BufferPool&) = delete;

    // Wait until `size` bytes fit in the budget. size must not exceed max_bytes().
    Task<Buffer> get(std::size_t size);
    std::size_t max_bytes() const { return max_bytes_; }
    std::size_t bytes_in_use() const { return max_bytes_ - budget_.available(); }

  private:
    friend class Buffer;
    static std::size_t capacity_for(std::size_t size);
    std::byte* take_block(std::size_t capacity);
    void give_back(std::byte* data, std::size_t capacity);

    std::size_t max_bytes_;
    AsyncSemaphore budget_;
    // Free blocks by power-of-two size class (index = log2(capacity / alignment)).
    std::vector<std::vector<std::byte*>> free_;
    std::size_t cached_bytes_ = 0;
};

} // namespace fleece::io
