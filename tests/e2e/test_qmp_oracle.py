"""Oracle test: one QMP script written for qemu-storage-daemon 7.2 runs against both
qemu-storage-daemon and fleeced; every step must give the same kind of reply (success or
failure, and the same error class)."""

import json
import os
import shutil
import subprocess

from fleece_testlib import FLEECED, Qmp

QSD = shutil.which('qemu-storage-daemon')


def outcome(reply):
    if 'return' in reply:
        return 'ok'
    return 'error:' + reply['error']['class']


def outcomes_until_sync(q, text):
    """Sends `text` (which may hold several JSON texts, or broken ones) and a query-version
    with a sync id; returns the outcomes of every reply before the sync reply (with the id
    they echo), so a server that answers a bad text more or fewer times than QEMU shows."""
    q.sock.sendall(text.encode() + b'\n' + json.dumps(
        {'execute': 'query-version', 'id': 'sync'}).encode() + b'\n')
    got = []
    while True:
        reply = q._recv_any()
        if 'event' in reply:
            continue
        if reply.get('id') == 'sync':
            return ' '.join(got)
        got.append(outcome(reply) + ('#%s' % json.dumps(reply['id']) if 'id' in reply else ''))


# Request texts that are broken at the JSON or QMP level, sent after negotiation.
MALFORMED = [
    '{"execute": ]}',
    '{"execute": "query-version",}',
    '}',
    'nul',
    '[]',
    '42',
    '"str"',
    '{"arguments": {}}',
    '{"execute": 1}',
    '{"execute": "query-version", "arguments": []}',
    '{"execute": "query-version", "bogus": 1}',
    '{"execute": "query-version", "id": 5} {"execute": "x-nope", "id": [1, {"a": null}]}',
    '{"execute": "blockdev-del", "arguments": {"node-name": 5}, "id": 4}',
    '{"execute": "query-named-block-nodes", "arguments": {"flat": "yes"}}',
    '{"execute": "query-version", "id": "\\u00e9"}',
    # QEMU's parser extensions: single-quoted strings, the escape \' in any string
    "{'execute': 'query-version', 'id': 'a \"b\" \\'c\\''}",
    '{"execute": "query-version", "id": "it\\\'s"}',
]


def run_script(binary, tmp_path, tag):
    work = tmp_path / tag
    work.mkdir()
    disk0 = work / 'disk0.raw'
    disk1 = work / 'disk1.raw'
    for d in (disk0, disk1):
        with open(d, 'wb') as f:
            f.truncate(4 << 20)
    sock = str(work / 'qmp.sock')
    argv = [binary,
            '--blockdev', 'driver=file,node-name=f0,filename=%s' % disk0,
            '--blockdev', json.dumps({'driver': 'raw', 'node-name': 'r0', 'file': 'f0'}),
            '--chardev', 'socket,id=qmp0,path=%s,server=on,wait=off' % sock,
            '--monitor', 'chardev=qmp0']
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    steps = []
    try:
        q = Qmp(sock, negotiate=False)
        assert 'QMP' in q.greeting
        steps.append(('before negotiation', outcome(q.command('query-version'))))
        steps.append(('qmp_capabilities', outcome(q.command('qmp_capabilities'))))
        steps.append(('qmp_capabilities again', outcome(q.command('qmp_capabilities'))))
        steps.append(('add file', outcome(q.command('blockdev-add', driver='file', **{'node-name': 'f1', 'filename': str(disk1)}))))
        steps.append(('add raw', outcome(q.command('blockdev-add', driver='raw', file='f1', **{'node-name': 'r1'}))))
        steps.append(('add raw nested', outcome(q.command('blockdev-add', driver='raw', **{'node-name': 'r2', 'file': {'driver': 'file', 'filename': str(disk1), 'read-only': True}, 'read-only': True}))))
        nodes = q.command('query-named-block-nodes')
        steps.append(('query', outcome(nodes)))
        names = sorted(n['node-name'] for n in nodes['return'] if not n['node-name'].startswith('#'))
        steps.append(('node names', ','.join(names)))
        steps.append(('del in use', outcome(q.command('blockdev-del', **{'node-name': 'f1'}))))
        steps.append(('del r1', outcome(q.command('blockdev-del', **{'node-name': 'r1'}))))
        steps.append(('del f1', outcome(q.command('blockdev-del', **{'node-name': 'f1'}))))
        steps.append(('del r2', outcome(q.command('blockdev-del', **{'node-name': 'r2'}))))
        steps.append(('del missing node', outcome(q.command('blockdev-del', **{'node-name': 'nope'}))))
        steps.append(('duplicate', outcome(q.command('blockdev-add', driver='raw', file='f0', **{'node-name': 'r0'}))))
        steps.append(('unknown command', outcome(q.command('no-such-command'))))
        steps.append(('missing argument', outcome(q.command('blockdev-del'))))
        steps.append(('unknown argument', outcome(q.command('blockdev-del', **{'node-name': 'r0', 'bogus': 1}))))
        steps.append(('wrong type', outcome(q.command('blockdev-del', **{'node-name': 5}))))
        steps.append(('bad driver option', outcome(q.command('blockdev-add', driver='file', **{'node-name': 'x', 'filename': str(disk1), 'bogus': 1}))))
        steps.append(('missing file', outcome(q.command('blockdev-add', driver='file', **{'node-name': 'x', 'filename': str(work / 'absent')}))))
        steps.append(('malformed json', outcome(q.raw('{"execute": ]}'))))
        steps.append(('still serving', outcome(q.command('query-version'))))
        for text in MALFORMED:
            steps.append(('malformed ' + text, outcomes_until_sync(q, text)))
        steps.append(('add without driver', outcome(q.command('blockdev-add', **{'node-name': 'x'}))))
        steps.append(('add unknown driver', outcome(q.command('blockdev-add', driver='nope', **{'node-name': 'x'}))))
        steps.append(('add raw over missing node', outcome(q.command('blockdev-add', driver='raw', file='absent', **{'node-name': 'x'}))))
        steps.append(('add raw over a number', outcome(q.command('blockdev-add', driver='raw', file=5, **{'node-name': 'x'}))))
        # The --blockdev nodes: the file under the raw node is in use, then in order.
        steps.append(('del command-line node in use', outcome(q.command('blockdev-del', **{'node-name': 'f0'}))))
        steps.append(('del r0', outcome(q.command('blockdev-del', **{'node-name': 'r0'}))))
        steps.append(('del f0', outcome(q.command('blockdev-del', **{'node-name': 'f0'}))))
        nodes = q.command('query-named-block-nodes')
        steps.append(('node names at the end', ','.join(sorted(n['node-name'] for n in nodes['return']))))
        steps.append(('quit', outcome(q.command('quit'))))
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return steps


def test_same_replies_as_qemu_storage_daemon(tmp_path):
    assert QSD, 'qemu-storage-daemon (Debian qemu-system-common) is required'
    assert os.access(FLEECED, os.X_OK), FLEECED
    theirs = run_script(QSD, tmp_path, 'qsd')
    ours = run_script(FLEECED, tmp_path, 'fleeced')
    # The script itself must exercise both outcomes, or the comparison proves nothing.
    kinds = {o for _, o in theirs}
    assert 'ok' in kinds and 'error:CommandNotFound' in kinds and 'error:GenericError' in kinds
    for (step, want), (_, got) in zip(theirs, ours):
        assert got == want, 'step %r: qemu-storage-daemon %r, fleeced %r' % (step, want, got)
    assert ours == theirs
