#include "daemon/options.hpp"

#include "control/keyval.hpp"

#include <nlohmann/json.hpp>

namespace fleece::daemon {

using nlohmann::json;

std::optional<bool> parse_on_off(const std::string& s) {
    if (s == "on" || s == "yes" || s == "true" || s == "y" || s.empty()) return true;
    if (s == "off" || s == "no" || s == "false" || s == "n") return false;
    return std::nullopt;
}

const char* usage_text() {
    return "Usage: fleeced [options]\n"
           "  --chardev socket,id=ID,path=PATH,server=on,wait=off  QMP socket\n"
           "  --monitor [chardev=]ID[,mode=control]                QMP monitor on a chardev\n"
           "  --blockdev OPTIONS      add a block node (key=value or JSON)\n"
           "  --object TYPE,id=ID,... add an object (tls-creds-x509, tls-creds-psk)\n"
           "  --bitmap-sidecar node=NODE,path=PATH[,write-ahead=on][,journal-granularity=BYTES]\n"
           "                          keep NODE's persistent dirty bitmaps in a sidecar file\n"
           "                          (write-ahead: they survive a crash); before the exports\n"
           "  --pidfile PATH          write the daemon's pid to PATH\n"
           "  --daemonize             detach once the monitors are listening\n"
           "  -h, --help              show this help\n"
           "  -V, --version           show the version\n";
}

namespace {

Error usage_error(const std::string& msg) {
    return make_error("fleeced: " + msg);
}

Result<bool> parse_bool(const std::string& key, const json& v) {
    if (auto b = parse_on_off(v.get<std::string>())) return *b;
    return usage_error("--chardev: parameter '" + key + "' expects 'on' or 'off'");
}

// Legacy flags ("server", "nowait") come without '=': turn them into key=on / wait=off so
// the keyval parser sees one syntax.
std::string normalize_legacy_flags(const std::string& text) {
    std::string out;
    std::size_t start = 0;
    bool first = true;
    while (start <= text.size()) {
        std::size_t comma = text.find(',', start);
        if (comma == std::string::npos) comma = text.size();
        std::string part = text.substr(start, comma - start);
        if (!first) {
            if (part == "server")
                part = "server=on";
            else if (part == "nowait")
                part = "wait=off";
            else if (part == "wait")
                part = "wait=on";
        }
        out += (first ? "" : ",") + part;
        first = false;
        start = comma + 1;
    }
    return out;
}

Result<ChardevOption> parse_chardev(const std::string& text) {
    auto kv = control::parse_keyval(normalize_legacy_flags(text), "backend");
    if (!kv) return usage_error("--chardev: " + kv.error().message);
    json& o = kv.value();
    ChardevOption c;
    for (auto& [key, value] : o.items()) {
        if (!value.is_string()) return usage_error("--chardev: invalid parameter '" + key + "'");
        if (key == "backend") {
            if (value != "socket")
                return usage_error("--chardev: only the 'socket' backend is supported");
        } else if (key == "id") {
            c.id = value.get<std::string>();
        } else if (key == "path") {
            c.path = value.get<std::string>();
        } else if (key == "server") {
            auto b = parse_bool(key, value);
            if (!b) return b.error();
            if (!b.value()) return usage_error("--chardev: only server=on is supported");
        } else if (key == "wait") {
            auto b = parse_bool(key, value);
            if (!b) return b.error();
            if (b.value()) return usage_error("--chardev: wait=on is not supported, use wait=off");
        } else {
            return usage_error("--chardev: unsupported parameter '" + key + "'");
        }
    }
    if (!o.contains("backend"))
        return usage_error("--chardev: missing backend (e.g. 'socket,...')");
    if (c.id.empty()) return usage_error("--chardev: parameter 'id' is missing");
    if (c.path.empty()) return usage_error("--chardev: parameter 'path' is missing");
    return c;
}

Result<std::string> parse_monitor(const std::string& text) {
    auto kv = control::parse_keyval(text, "chardev");
    if (!kv) return usage_error("--monitor: " + kv.error().message);
    std::string chardev;
    for (auto& [key, value] : kv.value().items()) {
        if (!value.is_string()) return usage_error("--monitor: invalid parameter '" + key + "'");
        if (key == "chardev")
            chardev = value.get<std::string>();
        else if (key == "mode") {
            if (value != "control") return usage_error("--monitor: only mode=control is supported");
        } else if (key == "pretty" || key == "id") {
            // Accepted for compatibility; replies are always compact.
        } else
            return usage_error("--monitor: unsupported parameter '" + key + "'");
    }
    if (chardev.empty()) return usage_error("--monitor: parameter 'chardev' is missing");
    return chardev;
}

bool takes_value(const std::string& name) {
    return name == "chardev" || name == "monitor" || name == "pidfile" || name == "blockdev" ||
           name == "nbd-server" || name == "export" || name == "object" || name == "bitmap-sidecar";
}

} // namespace

Result<Options> parse_options(const std::vector<std::string>& args) {
    Options o;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& arg = args[i];
        if (arg == "-h" || arg == "--help") {
            o.help = true;
            continue;
        }
        if (arg == "-V" || arg == "--version") {
            o.version = true;
            continue;
        }
        if (arg.rfind("--", 0) != 0) return usage_error("unexpected argument '" + arg + "'");
        std::string name = arg.substr(2);
        std::string value;
        bool has_value = false;
        if (auto eq = name.find('='); eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
            has_value = true;
        }
        if (name == "daemonize") {
            if (has_value) return usage_error("--daemonize takes no value");
            o.daemonize = true;
            continue;
        }
        if (!takes_value(name)) return usage_error("unknown option '--" + name + "'");
        if (!has_value) {
            if (i + 1 >= args.size()) return usage_error("--" + name + " requires a value");
            value = args[++i];
        }
        if (name == "object") {
            o.objects.push_back(value);
            continue;
        }
        if (name == "nbd-server") {
            o.nbd_servers.push_back(value);
            continue;
        }
        if (name == "export") {
            o.exports.push_back(value);
            continue;
        }
        if (name == "bitmap-sidecar") {
            o.bitmap_sidecars.push_back(value);
            continue;
        }
        if (name == "chardev") {
            auto c = parse_chardev(value);
            if (!c) return c.error();
            o.chardevs.push_back(std::move(c.value()));
        } else if (name == "monitor") {
            auto m = parse_monitor(value);
            if (!m) return m.error();
            o.monitors.push_back(std::move(m.value()));
        } else if (name == "pidfile") {
            o.pidfile = value;
        } else if (name == "blockdev") {
            o.blockdevs.push_back(value);
        }
    }
    return o;
}

Status check_options(const Options& o) {
    for (const auto& m : o.monitors) {
        bool found = false;
        for (const auto& c : o.chardevs)
            found = found || c.id == m;
        if (!found) return usage_error("--monitor: chardev '" + m + "' not found");
    }
    for (std::size_t i = 0; i < o.chardevs.size(); ++i)
        for (std::size_t j = i + 1; j < o.chardevs.size(); ++j)
            if (o.chardevs[i].id == o.chardevs[j].id)
                return usage_error("--chardev: duplicate id '" + o.chardevs[i].id + "'");
    return {};
}

} // namespace fleece::daemon
