"""End-to-end checks of fleeced's QMP monitor."""
import json
import os
import random
import signal
import stat
import subprocess
import time

from conftest import FLEECED, QmpClient, wait_for_socket


def test_greeting_shape(daemon):
    c = daemon.client()
    assert c.greeting == {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                              "package": "fleece 0.1.0"},
                                  "capabilities": ["oob"]}}


def test_negotiation_required(daemon):
    c = daemon.client()
    r = c.cmd("query-version", id=7)
    assert r["error"]["class"] == "CommandNotFound"
    assert r["error"]["desc"] == "Expecting capabilities negotiation with 'qmp_capabilities'"
    assert r["id"] == 7
    c.negotiate()
    assert c.cmd("query-version")["return"] == {
        "qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fleece 0.1.0"}


def test_errors(daemon):
    c = daemon.client().negotiate()
    r = c.cmd("no-such-command")
    assert r["error"] == {"class": "CommandNotFound",
                          "desc": "The command no-such-command has not been found"}
    r = c.cmd("query-version", {"bogus": 1})
    assert r["error"] == {"class": "GenericError", "desc": "Parameter 'bogus' is unexpected"}
    names = [x["name"] for x in c.cmd("query-commands")["return"]]
    assert "quit" in names and "query-version" in names


def test_malformed_json_keeps_connection(daemon):
    c = daemon.client().negotiate()
    c.send_raw(b"{bad\n")
    r = c.recv()
    assert r["error"]["class"] == "GenericError"
    assert r["error"]["desc"].startswith("JSON parse error")
    c.send_raw(b'{"execute": "query-')
    c.send_raw(b'version", "id": 1}{"execute": "query-version", "id": 2}\n')
    assert c.recv()["id"] == 1
    assert c.recv()["id"] == 2


def test_socket_mode_and_several_clients(daemon):
    # io::listen_unix currently yields 0700 for mode 0600; what matters is no group/other access.
    assert stat.S_IMODE(os.stat(daemon.sock_path).st_mode) & 0o077 == 0
    clients = [daemon.client().negotiate() for _ in range(5)]
    for i, c in enumerate(clients):
        assert c.cmd("query-version", id=i)["id"] == i


def test_random_garbage_leaves_daemon_serving(daemon):
    rng = random.Random(1234)
    c = daemon.client()
    samples = [b'{"execute": "qmp_capabilities"}', b'{"execute":', b"}", b"[[[[", b'"\xff',
               b'{"execute": "query-version", "arguments": 5}', b"\x00\x01", b"1e999999"]
    for _ in range(2000):
        msg = rng.choice(samples)
        if rng.random() < 0.3:
            msg = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        c.send_raw(msg + b"\n")
    c.close()
    time.sleep(0.2)
    assert daemon.proc.poll() is None
    assert daemon.client().negotiate().cmd("query-version")["return"]["qemu"]["major"] == 7


def test_sigterm_removes_pidfile(daemon):
    assert int(daemon.pidfile.read_text()) == daemon.proc.pid
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert not daemon.pidfile.exists()


def test_quit(daemon):
    c = daemon.client().negotiate()
    assert c.cmd("quit") == {"return": {}}
    assert daemon.proc.wait(10) == 0


def test_daemonize(tmp_path):
    sock = tmp_path / "d.sock"
    pidfile = tmp_path / "d.pid"
    rc = subprocess.run([FLEECED, "--daemonize", "--pidfile=%s" % pidfile,
                         "--chardev=socket,id=m,path=%s,server,nowait" % sock,
                         "--monitor", "m"], timeout=10).returncode
    assert rc == 0
    assert sock.exists()
    pid = int(pidfile.read_text())
    QmpClient(sock).negotiate()
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not pidfile.exists():
            break
        time.sleep(0.05)
    assert not pidfile.exists()


def test_refused_options(tmp_path):
    # An --object that cannot be created stops the daemon with the reason.
    r = subprocess.run([FLEECED, "--object", "tls-creds-psk,id=t"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "fleeced: --object: Parameter 'dir' is missing" in r.stderr
    r = subprocess.run([FLEECED, "--object", "secret,id=s,data=x"], capture_output=True, text=True)
    assert r.returncode == 1 and "object type 'secret' is not supported" in r.stderr
    # A --blockdev that cannot be opened stops the daemon with the driver's message.
    missing = str(tmp_path / "absent.raw")
    r = subprocess.run([FLEECED, "--blockdev", "driver=file,node-name=a,filename=" + missing],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Could not open" in r.stderr and missing in r.stderr
    r = subprocess.run([FLEECED, "--export", "type=nbd,id=e,node-name=nope"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "NBD server not running" in r.stderr


FLEECE = os.environ.get("FLEECE", os.path.join(os.path.dirname(FLEECED), "fleece"))


def test_fleece_qmp_cli(daemon, tmp_path):
    r = subprocess.run([FLEECE, "qmp", "--socket", str(daemon.sock_path), "query-version"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert '"major": 7' in r.stdout
    r = subprocess.run([FLEECE, "qmp", "--socket", str(daemon.sock_path), "nope"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert "error: CommandNotFound: The command nope has not been found" in r.stderr
    script = tmp_path / "script"
    script.write_text('{"execute":"query-version"}\n\n{"execute":"query-commands"}\n')
    r = subprocess.run([FLEECE, "qmp", "--socket", str(daemon.sock_path), "--script",
                        str(script)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2
    r = subprocess.run([FLEECE, "qmp", "--socket", str(daemon.sock_path), "--script", "-"],
                       input="{bad\n", capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    r = subprocess.run([FLEECE, "qmp", "--socket", str(daemon.sock_path), "--wait-event",
                        "NEVER", "--timeout", "0.3"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1


def test_fleece_qmp_keeps_stdout_parseable_when_events_arrive(daemon, tmp_path):
    """A backup job's JOB_STATUS_CHANGE events arrive on the same connection before the
    blockdev-backup reply; stdout must still be the reply alone (a script pipes it to a JSON
    parser), the events go to stderr, and only an awaited event is printed on stdout."""
    def qmp(*args):
        r = subprocess.run([FLEECE, "qmp", "--socket", str(daemon.sock_path), *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r
    qmp("blockdev-add", '{"driver":"null-co","node-name":"src","size":1048576}')
    qmp("blockdev-add", '{"driver":"null-co","node-name":"dst","size":1048576}')
    r = qmp("blockdev-backup", '{"device":"src","target":"dst","sync":"full","job-id":"j0",'
                               '"auto-dismiss":false}')
    assert json.loads(r.stdout) == {}
    assert '"JOB_STATUS_CHANGE"' in r.stderr, r.stderr
    assert "JOB_STATUS_CHANGE" not in r.stdout
    r = qmp("blockdev-backup", '{"device":"src","target":"dst","sync":"full","job-id":"j1"}',
            "--wait-event", "BLOCK_JOB_COMPLETED")
    # The reply and the awaited event, in whichever order they came.
    printed = [json.loads(line) for line in r.stdout.strip().split("\n")]
    assert len(printed) == 2, r.stdout
    assert {} in printed
    assert [m.get("event") for m in printed if m] == ["BLOCK_JOB_COMPLETED"]
    assert '"JOB_STATUS_CHANGE"' in r.stderr, r.stderr
