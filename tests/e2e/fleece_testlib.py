"""Helpers for end-to-end tests: start fleeced, talk QMP, run qemu-io."""

import json
import os
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FLEECED = os.environ.get('FLEECED', os.path.join(ROOT, 'build', 'bin', 'fleeced'))
FLEECE = os.environ.get('FLEECE', os.path.join(ROOT, 'build', 'bin', 'fleece'))


class QmpError(Exception):
    def __init__(self, reply):
        super().__init__('%s: %s' % (reply['error']['class'], reply['error']['desc']))
        self.error_class = reply['error']['class']
        self.desc = reply['error']['desc']


class Qmp:
    def __init__(self, path, timeout=10, negotiate=True):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(60)
        self.buf = b''
        self.events = []
        self.next_id = 0
        self.greeting = self._recv_any()
        if negotiate:
            self.execute('qmp_capabilities')

    def _recv_any(self):
        while True:
            line, sep, rest = self.buf.partition(b'\n')
            if sep:
                self.buf = rest
                if line.strip():
                    return json.loads(line)
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError('QMP connection closed')
            self.buf += chunk

    def raw(self, text):
        """Sends `text` as is; returns the next message that is not an event."""
        self.sock.sendall(text.encode() + b'\n')
        while True:
            reply = self._recv_any()
            if 'event' in reply:
                self.events.append(reply)
                continue
            return reply

    def command(self, cmd_name, /, **args):
        """Returns the raw reply (return or error)."""
        self.next_id += 1
        msg = {"execute": cmd_name, "id": self.next_id}
        if args:
            msg['arguments'] = args
        self.sock.sendall(json.dumps(msg).encode() + b'\n')
        while True:
            reply = self._recv_any()
            if 'event' in reply:
                self.events.append(reply)
                continue
            if reply.get('id') == self.next_id:
                return reply

    def execute(self, cmd_name, /, **args):
        reply = self.command(cmd_name, **args)
        if 'error' in reply:
            raise QmpError(reply)
        return reply['return']

    def wait_event(self, name, timeout=120, match=None):
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev['event'] == name and (match is None or match(ev.get('data', {}))):
                    return self.events.pop(i)
            if not self.read_before(deadline):
                raise TimeoutError('no %s event within %ss' % (name, timeout))

    def read_before(self, deadline):
        """Reads one more message, keeping it in self.events if it is an event; False when
        the deadline (time.monotonic()) has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            msg = self._recv_any()
        finally:
            self.sock.settimeout(60)
        if 'event' in msg:
            self.events.append(msg)
        return True


class QmpClient:
    """A line-level QMP client for protocol tests (raw bytes, no negotiation, no id matching);
    Qmp below is the one for driving the daemon."""

    def __init__(self, path, timeout=5.0):
        # The socket file appears at bind(), a moment before listen(): retry a refusal.
        deadline = time.monotonic() + 10
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(str(path))
                break
            except ConnectionRefusedError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.file = self.sock.makefile("rb")
        self.greeting = self.recv()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def recv(self):
        line = self.file.readline()
        if not line:
            raise EOFError("connection closed")
        return json.loads(line)

    def recv_reply(self):
        """Next message that is not an event."""
        while True:
            msg = self.recv()
            if "event" not in msg:
                return msg

    def cmd(self, name, args=None, **extra):
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        req.update(extra)
        self.send_raw(json.dumps(req).encode() + b"\n")
        return self.recv_reply()

    def negotiate(self):
        assert self.cmd("qmp_capabilities") == {"return": {}}
        return self

    def close(self):
        self.file.close()
        self.sock.close()


def wait_for_socket(path, proc=None, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("fleeced exited with %d" % proc.returncode)
        time.sleep(0.02)
    raise TimeoutError("socket %s did not appear" % path)


class Daemon:
    """fleeced with a QMP monitor in `workdir`."""

    def __init__(self, workdir, extra_args=(), binary=None):
        self.workdir = str(workdir)
        self.qmp_path = os.path.join(self.workdir, 'qmp.sock')
        self.log = open(os.path.join(self.workdir, 'fleeced.log'), 'w')
        argv = [binary or FLEECED,
                '--chardev', 'socket,id=qmp0,path=%s,server=on,wait=off' % self.qmp_path,
                '--monitor', 'chardev=qmp0'] + list(extra_args)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.qmp = Qmp(self.qmp_path)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.qmp.execute('quit')
            except Exception:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def qemu_io(target, *commands, fmt='raw', read_only=False, check=True):
    argv = ['qemu-io', '-f', fmt]
    if read_only:
        argv.append('-r')
    for c in commands:
        argv += ['-c', c]
    argv.append(target)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    if check:
        assert p.returncode == 0 and 'failed' not in out and 'Pattern verification failed' not in out, out
    return out


def run(*argv, check=True, timeout=300):
    """Runs a command, output captured; with `check`, asserts it succeeded."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, '%s: %s%s' % (argv, p.stdout, p.stderr)
    return p


def dirty_bitmaps(qmp, node):
    """The node's "dirty-bitmaps" in query-named-block-nodes, as sent (None when absent)."""
    for n in qmp.execute('query-named-block-nodes', flat=True):
        if n['node-name'] == node:
            return n.get('dirty-bitmaps')
    raise KeyError(node)


def allocated(path):
    """Bytes the file takes on the host (du), not its length."""
    return os.stat(path).st_blocks * 512


def make_raw(path, size):
    with open(path, 'wb') as f:
        f.truncate(size)


def nbd_uri(sock, name):
    return 'nbd+unix:///%s?socket=%s' % (name, sock)


def dirty_map(uri, bitmap):
    """[(offset, length)] of dirty extents from nbdinfo --map=qemu:dirty-bitmap:NAME."""
    out = subprocess.run(['nbdinfo', '--json', '--map=qemu:dirty-bitmap:' + bitmap, uri],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [(e['offset'], e['length']) for e in json.loads(out) if e['type'] & 1]


def clusters_of(extents, gran=65536):
    """The indexes of the `gran`-sized clusters that (offset, length, ...) extents touch."""
    out = set()
    for off, length, *_ in extents:
        out.update(range(off // gran, (off + length + gran - 1) // gran))
    return out
