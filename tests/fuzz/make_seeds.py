#!/usr/bin/env python3
# Writes the hand-made seed inputs of the nbd_connection and qmp_session fuzz targets
# (see the layout comments at the top of each *_fuzz.cpp). Run from anywhere; rewrites
# corpus/nbd_connection/seed_* and corpus/qmp_session/seed_* only.
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- NBD --------------------------------------------------------------------------------
IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META = 8, 9, 10
READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZEROES, BLOCK_STATUS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
CLIENT_FLAGS = struct.pack(">I", 3)  # fixed newstyle + no zeroes


def opt(option, data=b""):
    return struct.pack(">QII", IHAVEOPT, option, len(data)) + data


def name(s):
    return struct.pack(">I", len(s)) + s.encode()


def info(export, infos=()):
    return name(export) + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta(export, queries):
    return name(export) + struct.pack(">I", len(queries)) + b"".join(name(q) for q in queries)


cookie = 0


def req(kind, offset=0, length=0, flags=0, payload=b""):
    global cookie
    cookie += 1
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, kind, cookie, offset, length) + payload


def structured_go():
    return (CLIENT_FLAGS + opt(OPT_STRUCTURED_REPLY) +
            opt(OPT_SET_META, meta("disk", ["base:allocation", "qemu:allocation-depth"])) +
            opt(OPT_GO, info("disk", [0, 1, 2, 3])))


nbd = {
    # writable export, structured replies, both meta contexts, every command once
    "seed_go_all_commands": bytes([0x02]) + structured_go() +
    req(WRITE, 0, 512, FUA, b"\xab" * 512) + req(READ, 0, 8192) + req(READ, 0, 8192, DF) +
    req(BLOCK_STATUS, 0, 1 << 20) + req(BLOCK_STATUS, 4096, 65536, REQ_ONE) +
    req(TRIM, 4096, 4096) + req(ZEROES, 8192, 4096, NO_HOLE) +
    req(ZEROES, 8192, 4096, FAST_ZERO) + req(FLUSH) + req(CACHE, 0, 4096) +
    req(READ, (1 << 20) - 512, 1024) + req(WRITE, 1 << 20, 1, 0, b"x") + req(42, 0, 0) +
    req(READ, 0, 512, 0x8000) + req(DISC),
    # the same with seeded random completion delays: replies out of order
    "seed_go_out_of_order": bytes([0x32]) + structured_go() +
    b"".join(req(WRITE, i * 4096, 256, 0, bytes([i]) * 256) for i in range(8)) +
    b"".join(req(READ, i * 4096, 4096) for i in range(8)) + req(FLUSH) + req(DISC),
    # old-style EXPORT_NAME, read-only export, simple replies, refused write with payload
    "seed_export_name_readonly": bytes([0x00]) + struct.pack(">I", 1) +
    opt(OPT_EXPORT_NAME, b"disk") + req(READ, 0, 512) + req(WRITE, 0, 512, 0, b"y" * 512) +
    req(TRIM, 0, 512) + req(READ, 0, 512) + req(DISC),
    # negotiation only: list, info (known and unknown), meta contexts, unknown option, abort
    "seed_negotiation": bytes([0x00]) + CLIENT_FLAGS + opt(OPT_LIST) + opt(OPT_LIST, b"x") +
    opt(OPT_INFO, info("disk", [1, 3])) + opt(OPT_INFO, info("nope")) + opt(OPT_INFO, b"\0") +
    opt(OPT_LIST_META, meta("disk", [])) + opt(OPT_STRUCTURED_REPLY) +
    opt(OPT_LIST_META, meta("disk", ["qemu:"])) + opt(OPT_LIST_META, meta("disk", ["base:"])) +
    opt(OPT_SET_META, meta("disk", ["qemu:dirty-bitmap:none"])) + opt(OPT_STARTTLS) +
    opt(99, b"abc") + opt(OPT_ABORT),
    # TLS-only server: options refused until STARTTLS, then garbage in the TLS handshake
    "seed_starttls_garbage": bytes([0x01]) + CLIENT_FLAGS + opt(OPT_GO, info("disk")) +
    opt(OPT_STARTTLS) + bytes.fromhex("160301002a010000260303") + b"\0" * 32 + b"garbage",
    "seed_starttls_eof": bytes([0x01]) + CLIENT_FLAGS + opt(OPT_LIST) + opt(OPT_STARTTLS),
    # oversized option (length over the limit, data discarded), bad option magic
    "seed_option_too_big": bytes([0x00]) + CLIENT_FLAGS +
    struct.pack(">QII", IHAVEOPT, OPT_GO, 1 << 20) + b"\0" * 64,
    "seed_bad_option_magic": bytes([0x00]) + CLIENT_FLAGS + struct.pack(">QII", 1, OPT_GO, 0),
    "seed_unknown_client_flags": bytes([0x00]) + struct.pack(">I", 0xff),
    # a write longer than the maximum payload, bad request magic
    "seed_oversize_write": bytes([0x02]) + structured_go() + req(WRITE, 0, 64 << 20) + b"z" * 64,
    "seed_bad_request_magic": bytes([0x00]) + structured_go() + b"\x11" * 28,
}

# ---- QMP --------------------------------------------------------------------------------


def qmp(*cmds, setup=0x0F):
    out = []
    for c in cmds:
        out.append(c if isinstance(c, str) else json.dumps(c))
    return bytes([setup]) + "\n".join(out).encode() + b"\n"


def ex(cmd, **args):
    d = {"execute": cmd}
    if args:
        d["arguments"] = {k.replace("_", "-"): v for k, v in args.items()}
    return d


null = {"driver": "null-co", "node-name": "n0", "size": 1 << 20, "read-zeroes": True}
qmp_seeds = {
    # the oracle script: add, query, delete in use then in order, bad commands and JSON
    "seed_blockdev_lifecycle": qmp(
        ex("blockdev-add", **null),
        ex("blockdev-add", driver="raw", node_name="r0", file="n0"),
        ex("blockdev-add", driver="raw", node_name="r1",
           file={"driver": "null-co", "node-name": "n1", "size": 65536}),
        ex("query-named-block-nodes"), ex("query-named-block-nodes", flat=True),
        ex("x-debug-query-block-graph"),
        ex("blockdev-del", node_name="n0"), ex("blockdev-del", node_name="r0"),
        ex("blockdev-del", node_name="n0"), ex("blockdev-del", node_name="nope"),
        ex("no-such-command"), ex("blockdev-del"), ex("blockdev-del", node_name="r1", bogus=1),
        '{"execute": "query-version", "id": [1, {"a": null}]}', '{"execute": ', "}{]",
        ex("query-commands"), setup=0x0D),
    # negotiation: commands before and after qmp_capabilities, twice, with oob
    "seed_negotiation": qmp(
        ex("query-version"), '{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
        '{"exec-oob": "qmp_capabilities", "id": 7}', ex("qmp_capabilities"),
        ex("qmp_capabilities"), '{"execute": "query-version", "extra": 1}', setup=0x0A),
    # bitmaps and transactions
    "seed_bitmaps": qmp(
        ex("blockdev-add", **null),
        ex("block-dirty-bitmap-add", node="n0", name="b0"),
        ex("block-dirty-bitmap-add", node="n0", name="b1", granularity=65536, persistent=False),
        ex("block-dirty-bitmap-merge", node="n0", target="b0", bitmaps=["b1"]),
        ex("block-dirty-bitmap-disable", node="n0", name="b1"),
        ex("block-dirty-bitmap-clear", node="n0", name="b0"),
        ex("transaction", actions=[
            {"type": "block-dirty-bitmap-add", "data": {"node": "n0", "name": "b2"}},
            {"type": "block-dirty-bitmap-remove", "data": {"node": "n0", "name": "b1"}}]),
        ex("transaction", actions=[
            {"type": "block-dirty-bitmap-add", "data": {"node": "n0", "name": "b0"}}]),
        ex("block-dirty-bitmap-remove", node="n0", name="b0"), ex("query-named-block-nodes")),
    # fleecing graph and a backup job, cancelled
    "seed_fleecing_backup": qmp(
        ex("blockdev-add", **null),
        ex("blockdev-add", driver="null-co", node_name="tmp", size=1 << 20),
        ex("blockdev-add", driver="null-co", node_name="tgt", size=1 << 20),
        ex("blockdev-add", driver="copy-before-write", node_name="cbw", file="n0", target="tmp"),
        ex("blockdev-add", driver="snapshot-access", node_name="acc", file="cbw"),
        ex("blockdev-backup", job_id="j0", device="acc", target="tgt", sync="full"),
        ex("query-block-jobs"), ex("query-jobs"), ex("job-pause", id="j0"),
        ex("job-resume", id="j0"), ex("block-job-set-speed", device="j0", speed=1),
        ex("job-cancel", id="j0"), ex("job-dismiss", id="j0"),
        ex("blockdev-del", node_name="cbw"), ex("blockdev-del", node_name="acc")),
    # exports: no NBD server (listeners are defused), export add/del/query
    "seed_exports": qmp(
        ex("blockdev-add", **null),
        ex("nbd-server-start", addr={"type": "unix", "data": {"path": "/tmp/x"}}),
        ex("block-export-add", type="nbd", id="e0", node_name="n0"),
        ex("query-block-exports"), ex("block-export-del", id="e0"), ex("nbd-server-stop"),
        ex("object-add", qom_type="tls-creds-psk", id="t0", dir="/tmp"),
        ex("object-del", id="t0"), ex("quit")),
    # file nodes are defused; fault injection rules
    "seed_file_and_faults": qmp(
        ex("blockdev-add", driver="file", node_name="f0", filename="/dev/null"),
        ex("blockdev-add", driver="fault-injection", node_name="fi", file=null),
        ex("x-fault-injection-set", node_name="fi",
           rules=[{"errno": 5, "operation": "read", "once": True}]),
        ex("blockdev-add", driver="null-co", node_name="n9", size=1 << 20),
        ex("blockdev-replace", parent_type="driver", parent="fi", child="file", new_child="n9"),
        ex("query-named-block-nodes"), ex("blockdev-del", node_name="fi")),
    # a byte at a time
    "seed_byte_at_a_time": qmp(ex("blockdev-add", **null), ex("query-named-block-nodes"),
                               '{"execute": "query-version", "id": "\\u00e9\\"}"}', setup=0x01),
}

for sub, seeds in (("nbd_connection", nbd), ("qmp_session", qmp_seeds)):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    for n, data in seeds.items():
        with open(os.path.join(d, n), "wb") as f:
            f.write(data)
