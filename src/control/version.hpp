#pragma once
// The version we report over QMP. We claim the QEMU release whose QMP schema we follow, so
// clients that branch on the QEMU version (libvirt, Proxmox tooling) pick the right paths.

#include <nlohmann/json.hpp>

namespace fleece::control {

inline constexpr int qemu_major = 7;
inline constexpr int qemu_minor = 2;
inline constexpr int qemu_micro = 0;
inline constexpr const char* package_string = "fleece 0.1.0";

inline nlohmann::json version_json() {
    return {{"qemu", {{"micro", qemu_micro}, {"minor", qemu_minor}, {"major", qemu_major}}},
            {"package", package_string}};
}

} // namespace fleece::control
