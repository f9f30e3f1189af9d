#pragma once
// Opening images for `fleece img`: every data operation goes through the block layer, so
// an image is a format node (raw or qcow2) over a protocol node (file, or nbd for
// nbd:// and nbd+unix:// URIs) in a private graph, used through one Child edge.

#include "block/graph.hpp"
#include "io/event_loop.hpp"
#include "io/task.hpp"
#include "util/result.hpp"

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fleece::cli::img {

// Where an image lives: a local path or an NBD URI.
struct Location {
    bool nbd = false;
    std::string name;        // as given on the command line
    nlohmann::json protocol; // blockdev-add options of the protocol node
};
Result<Location> parse_location(const std::string& name);

// The formats `fleece img` reads and writes.
bool known_format(const std::string& format);

// One command's block layer: an event loop and a graph, closed at the end.
struct Session {
    io::EventLoop loop;
    block::Graph graph;
    unsigned next_id = 0;
    std::string fresh_name(const char* prefix) { return prefix + std::to_string(next_id++); }
};

struct OpenRequest {
    std::string name;   // path or NBD URI
    std::string format; // "" = probe (qcow2 magic, else raw)
    bool writable = false;
    nlohmann::json format_options = nlohmann::json::object(); // extra options of the format node
    // qemu-img's `-t unsafe`: never flush (the data may be lost on a host crash).
    bool no_flush = false;
};

class Image final : public block::ChildParent {
  public:
    Image(block::Graph& graph, std::string name, std::string format, block::Node& node, bool nbd)
        : graph_(graph), name_(std::move(name)), format_(std::move(format)), node_(node),
          nbd_(nbd) {}
    ~Image() override { release(); }
    Image(const Image&) = delete;
    Image& operator=(const Image&) = delete;

    const std::string& name() const { return name_; }
    const std::string& format() const { return format_; }
    bool nbd() const { return nbd_; }
    std::uint64_t size() const { return node_.size(); }
    block::Node& node() const { return node_; }
    block::Child& io() const { return *child_; }
    // The format nodes of the backing chain, this image first.
    std::vector<block::Node*> chain() const;
    // Give the edge back to the graph (before closing it).
    void release() {
        if (child_) graph_.detach(std::move(child_));
    }

    std::string parent_description() const override { return "fleece img"; }
    std::string parent_name() const override { return "fleece-img"; }
    const char* parent_type() const override { return "block-backend"; }

    // Set by open_image with the Child it attached.
    void set_child(std::unique_ptr<block::Child> c) { child_ = std::move(c); }

  private:
    block::Graph& graph_;
    std::string name_;
    std::string format_;
    block::Node& node_;
    std::unique_ptr<block::Child> child_;
    bool nbd_;
};

// The format of an image: "qcow2" if it starts with the qcow2 magic, else "raw".
io::Task<Result<std::string>> probe_image_format(Session* s, std::string name);

// Opens `req` in `s`; the error message is ready to print ("Could not open 'X': ...").
io::Task<Result<std::unique_ptr<Image>>> open_image(Session* s, OpenRequest req);

// Runs `task` on the session's loop, then closes every node (flushing writable ones).
template <class T> T run_and_close(Session& s, io::Task<T> task) {
    T out = s.loop.run_until_complete(std::move(task));
    s.loop.run_until_complete(s.graph.close_all());
    return out;
}

} // namespace fleece::cli::img
