#include "cli/img/img_command.hpp"

#include <iostream>

namespace fleece::cli::img {

int fail(const std::string& message, int code) {
    std::cout.flush();
    std::cerr << "fleece img: " << message << "\n";
    return code;
}

void add_img_commands(CLI::App& app, Action* action) {
    CLI::App* img = app.add_subcommand("img", "Offline image work (qemu-img compatible)");
    img->require_subcommand(1);
    add_create(*img, action);
    add_info(*img, action);
    add_check(*img, action);
    add_map(*img, action);
    add_compare(*img, action);
    add_convert(*img, action);
    add_resize(*img, action);
    add_bitmap(*img, action);
}

} // namespace fleece::cli::img
