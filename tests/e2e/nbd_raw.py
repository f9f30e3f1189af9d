"""A minimal NBD client on a raw socket, for what libnbd will not send: unknown
commands, garbage, OPT_ABORT, NBD_OPT_EXPORT_NAME, STARTTLS on a plain server."""

import socket
import struct

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
REPLY_MAGIC = 0x0003e889045565a9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_GO = 1, 2, 3, 5, 7
REP_ACK = 1
REP_ERR_POLICY = (1 << 31) | 2
REP_ERR_TLS_REQD = (1 << 31) | 5


class RawClient:
    def __init__(self, path, flags=1 | 2):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30)
        self.s.connect(path)
        magic, opt, self.server_flags = struct.unpack('>QQH', self.recv(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT
        self.s.sendall(struct.pack('>I', flags))

    def recv(self, n):
        data = b''
        while len(data) < n:
            chunk = self.s.recv(n - len(data))
            if not chunk:
                raise EOFError('server closed the connection')
            data += chunk
        return data

    def option(self, opt, payload=b''):
        self.s.sendall(struct.pack('>QII', IHAVEOPT, opt, len(payload)) + payload)

    def option_reply(self):
        magic, opt, rtype, length = struct.unpack('>QIII', self.recv(20))
        assert magic == REPLY_MAGIC
        return opt, rtype, self.recv(length)

    def go(self, name):
        self.option(OPT_GO, struct.pack('>I', len(name)) + name.encode() + struct.pack('>H', 0))
        while True:
            _, rtype, data = self.option_reply()
            if rtype == REP_ACK:
                return
            assert not rtype & (1 << 31), hex(rtype)

    def request(self, cmd, offset, length, flags=0, cookie=1, payload=b''):
        self.s.sendall(struct.pack('>IHHQQI', REQUEST_MAGIC, flags, cmd, cookie, offset, length)
                       + payload)

    def simple_reply(self):
        magic, error, cookie = struct.unpack('>IIQ', self.recv(16))
        assert magic == SIMPLE_REPLY_MAGIC
        return error, cookie

    def closed(self):
        try:
            return self.s.recv(1) == b''
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()
