#pragma once
// Permissions on graph edges (after QEMU's model). Every edge parent->child carries `perm`
// (what the parent does to the child) and `shared` (what it lets every other parent do).
// A graph is valid when, on every node, no parent's perm is missing from another parent's
// shared set.

#include <cstdint>
#include <string>

namespace fleece::block {

using PermSet = std::uint32_t;
inline constexpr PermSet perm_consistent_read = 0x1; // needs self-consistent data
inline constexpr PermSet perm_write = 0x2;           // changes visible content
inline constexpr PermSet perm_write_unchanged = 0x4; // writes that keep content (CBW copies)
inline constexpr PermSet perm_resize = 0x8;
inline constexpr PermSet perm_all = 0xf;

// "consistent-read, write" etc., QEMU's spelling, in bit order.
std::string perm_names(PermSet perms);
// The single name of the lowest set bit.
const char* perm_name(PermSet one_perm);

// Default rules drivers build on (QEMU block.c semantics):
struct PermPair {
    PermSet perm;
    PermSet shared;
};
// A filter's child: pass the parents' needs through unchanged.
inline PermPair filter_child_perms(PermSet parent_perm, PermSet parent_shared) {
    return {parent_perm & perm_all, parent_shared & perm_all};
}
// A format driver's storage child: metadata must stay consistent, write-unchanged becomes
// write (metadata changes) and writing may grow the file; nobody else may resize it.
inline PermPair storage_child_perms(PermSet parent_perm, PermSet parent_shared, bool read_only) {
    PermSet perm = perm_consistent_read;
    if (!read_only && (parent_perm & (perm_write | perm_write_unchanged)))
        perm |= perm_write | perm_resize;
    return {perm, parent_shared & ~perm_resize & perm_all};
}
// A backing (COW) child: only reads; others may write it only if the parents allow writes.
inline PermPair backing_child_perms(PermSet parent_perm, PermSet parent_shared) {
    PermSet shared = perm_consistent_read | perm_write_unchanged;
    if (parent_shared & perm_write) shared |= perm_write | perm_resize;
    return {parent_perm & perm_consistent_read, shared};
}

} // namespace fleece::block
