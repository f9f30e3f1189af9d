// The explicit list of node drivers (no static self-registration: static libraries would
// drop it silently). One line per driver.
#include "nodes/registry.hpp"

#include "nodes/copy_before_write/cbw_node.hpp"
#include "nodes/fault_injection/fault_injection_node.hpp"
#include "nodes/file/file_node.hpp"
#include "nodes/nbd/nbd_client_node.hpp"
#include "nodes/null/null_node.hpp"
#include "nodes/qcow2/qcow2_node.hpp"
#include "nodes/raw/raw_node.hpp"
#include "nodes/snapshot_access/snapshot_access_node.hpp"

namespace fleece::nodes {

const std::vector<DriverSpec>& drivers() {
    static const std::vector<DriverSpec> list = {
        file_driver(),
        raw_driver(),
        nbd_client_driver(),
        null_driver(),
        copy_before_write_driver(),
        snapshot_access_driver(),
        fault_injection_driver(),
        qcow2_driver(),
    };
    return list;
}

} // namespace fleece::nodes
