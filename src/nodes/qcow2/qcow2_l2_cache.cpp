#include "nodes/qcow2/qcow2_l2_cache.hpp"

namespace fleece::nodes::qcow2 {

L2Table* L2Cache::find(std::uint64_t offset) {
    auto it = map_.find(offset);
    if (it == map_.end()) return nullptr;
    it->second->last_use = ++clock_;
    return it->second.get();
}

L2Table* L2Cache::insert(std::unique_ptr<L2Table> t) {
    t->last_use = ++clock_;
    L2Table* p = t.get();
    map_[t->offset] = std::move(t);
    return p;
}

bool L2Cache::evict_one_clean() {
    auto victim = map_.end();
    for (auto it = map_.begin(); it != map_.end(); ++it)
        if (!it->second->dirty &&
            (victim == map_.end() || it->second->last_use < victim->second->last_use))
            victim = it;
    if (victim == map_.end()) return false;
    map_.erase(victim);
    return true;
}

std::vector<L2Table*> L2Cache::dirty_tables() const {
    std::vector<L2Table*> out;
    for (const auto& [_, t] : map_)
        if (t->dirty) out.push_back(t.get());
    return out;
}

} // namespace fleece::nodes::qcow2
