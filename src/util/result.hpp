#pragma once
// Result<T>: a value or an Error. Used on the control plane (graph changes, option parsing),
// where failures carry a human message and a QMP error class. The data path uses
// std::error_code (errno values) instead.

#include "util/assert.hpp"

#include <string>
#include <utility>
#include <variant>

namespace fleece {

struct Error {
    // QMP error class: "GenericError", "CommandNotFound", "DeviceNotFound", ...
    std::string error_class = "GenericError";
    std::string message;
};

inline Error make_error(std::string message) {
    return Error{"GenericError", std::move(message)};
}

template <class T> class [[nodiscard]] Result {
  public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    T& value() & {
        FLEECE_ASSERT(ok());
        return std::get<0>(v_);
    }
    T&& value() && {
        FLEECE_ASSERT(ok());
        return std::get<0>(std::move(v_));
    }
    T* operator->() { return &value(); }
    T& operator*() & { return value(); }
    T&& operator*() && { return std::move(*this).value(); }
    const Error& error() const {
        FLEECE_ASSERT(!ok());
        return std::get<1>(v_);
    }

  private:
    std::variant<T, Error> v_;
};

template <> class [[nodiscard]] Result<void> {
  public:
    Result() = default;
    Result(Error error) : error_(std::move(error)), ok_(false) {}
    bool ok() const { return ok_; }
    explicit operator bool() const { return ok_; }
    const Error& error() const {
        FLEECE_ASSERT(!ok_);
        return error_;
    }

  private:
    Error error_;
    bool ok_ = true;
};

using Status = Result<void>;

} // namespace fleece
