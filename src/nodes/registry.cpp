// The explicit list of node drivers (no static self-registration: static libraries would
// drop it silently). One line per driver.
#include "nodes/registry.hpp"

#include "nodes/fault_injection/fault_injection_node.hpp"
#include "nodes/file/file_node.hpp"
#include "nodes/null/null_node.hpp"
#include "nodes/raw/raw_node.hpp"

namespace fleece::nodes {

const std::vector<DriverSpec>& drivers() {
    static const std::vector<DriverSpec> list = {
        null_driver(),
        file_driver(),
        raw_driver(),
        fault_injection_driver(),
    };
    return list;
}

} // namespace fleece::nodes
