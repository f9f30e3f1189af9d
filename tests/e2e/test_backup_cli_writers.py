"""`fleece backup` of a node with two writers (two writable exports of one node, both
writing during the backup): the CLI moves both onto the copy-before-write filter in one
`transaction` of blockdev-replace actions, which the daemon applies as one graph change.
Also the QMP side of that: one replace alone conflicts, the transaction does not, and a
failing transaction changes nothing. And the copy-before-write statistics (x-cbw-stats in
query-named-block-nodes, cbw-* fields in the JSON lines)."""

import os
import shutil

import pytest

from fleece_testlib import QmpError, qemu_io
from test_backup_cli import (SIZE, Cli, GuestWriter, Target, events, graph_state, guest,  # noqa: F401
                             no_leftovers, set_job_speed)


def add_second_writer(d, guest_uri):
    d.qmp.execute('block-export-add', type='nbd', id='g2', name='g2', writable=True, **{'node-name': 'disk'})
    return guest_uri.replace('/guest?', '/g2?')


def test_backup_of_a_node_with_two_writing_exports(guest, tmp_path):
    d, disk, guest_uri, targets = guest
    q = d.qmp
    g2_uri = add_second_writer(d, guest_uri)
    target = Target(tmp_path)
    targets.append(target)
    before = graph_state(q)
    writers = [GuestWriter(guest_uri), GuestWriter(g2_uri)]
    for w in writers:
        w.start()
        w.resume()
        w.wait_for_writes(50)
    for w in writers:
        w.pause()
    shutil.copyfile(disk, str(tmp_path / 'expected.raw'))  # the snapshot point
    cli = Cli('--qmp', d.qmp_path, '--node', 'disk', '--target', target.uri, '--speed', '1')
    snap = cli.wait_for('snapshot')
    assert sorted(snap['users']) == ["export 'g2'", "export 'guest'"], snap
    cli.wait_for('started')
    # Both exports now sit on the filter; both keep writing during the backup.
    exports = {e['id']: e['node-name'] for e in q.execute('query-block-exports')}
    assert exports['guest'] == exports['g2'] and exports['guest'].endswith('-cbw'), exports
    for w in writers:
        w.resume()
    for w in writers:
        w.wait_for_writes(1500)
    set_job_speed(q, 0)
    rc, lines, err = cli.finish()
    for w in writers:
        w.wait_for_writes(50)  # still served after the backup
        w.stop.set()
        w.join(30)
        assert not w.errors, w.errors
    assert rc == 0, (lines, err)
    summary = events(lines, 'summary')[-1]
    assert summary['ok'] and summary['graph-restored'] and summary['bytes'] == SIZE
    check_cbw_fields(lines, summary)
    with open(str(tmp_path / 'expected.raw'), 'rb') as f:
        expected = f.read()
    assert target.read_all(str(tmp_path / 'got.raw')) == expected, 'not the snapshot point'
    with open(disk, 'rb') as f:
        assert f.read() != expected, 'the guest writes did not reach the disk'
    assert graph_state(q) == before
    no_leftovers(q, str(tmp_path))
    qemu_io(g2_uri, 'write -P 0x21 0 64k', 'read -P 0x21 0 64k')


def check_cbw_fields(lines, summary):
    """Progress lines and the summary carry the copy-before-write count and latency; the
    guests rewrote the disk during the backup, so copies happened and took time."""
    progress = events(lines, 'progress')
    assert progress
    for p in progress:
        for key in ('cbw-count', 'cbw-errors', 'cbw-latency-avg-us', 'cbw-latency-max-us'):
            assert key in p, p
        assert p['cbw-latency-max-us'] >= p['cbw-latency-avg-us'] >= 0
    counts = [p['cbw-count'] for p in progress]
    assert counts == sorted(counts), counts  # a running total
    assert summary['cbw-count'] >= counts[-1] > 0, (summary, counts)
    assert summary['cbw-errors'] == 0
    assert summary['cbw-latency-max-us'] >= summary['cbw-latency-avg-us'] > 0, summary


def replace(export_id, node):
    return {'type': 'blockdev-replace',
            'data': {'parent-type': 'export', 'id': export_id, 'new-child': node}}


def test_transaction_moves_several_parents_atomically(guest, tmp_path):
    d, disk, guest_uri, _ = guest
    q = d.qmp
    g2_uri = add_second_writer(d, guest_uri)
    fleece = str(tmp_path / 'fl.raw')
    with open(fleece, 'wb') as f:
        f.truncate(SIZE)
    q.execute('blockdev-add', driver='file', filename=fleece, **{'node-name': 'fl'})
    q.execute('blockdev-add', driver='copy-before-write', file='disk', target='fl', **{'node-name': 'cbw'})
    before = graph_state(q)
    # One writer alone cannot move: the filter would forbid the other's writes.
    with pytest.raises(QmpError) as e:
        q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'cbw'})
    assert 'conflict' in e.value.desc.lower() and "'write'" in e.value.desc, e.value.desc
    assert graph_state(q) == before
    # A transaction whose second action fails (no such export) changes nothing.
    with pytest.raises(QmpError) as e:
        q.execute('transaction', actions=[replace('guest', 'cbw'), replace('nope', 'cbw')])
    assert "'nope'" in e.value.desc
    assert graph_state(q) == before
    # Both at once.
    q.execute('transaction', actions=[replace('guest', 'cbw'), replace('g2', 'cbw')])
    assert {e['id']: e['node-name'] for e in q.execute('query-block-exports')} == {'guest': 'cbw', 'g2': 'cbw'}
    qemu_io(guest_uri, 'write -P 0x61 0 64k')
    qemu_io(g2_uri, 'write -P 0x62 1M 64k')
    assert os.stat(fleece).st_blocks * 512 >= 128 * 1024  # both writes were copied first
    stats = [n['x-cbw-stats'] for n in q.execute('query-named-block-nodes') if n['node-name'] == 'cbw'][0]
    assert stats['requests'] == 2 and stats['errors'] == 0 and not stats['snapshot-broken'], stats
    assert stats['latency-max-ns'] > 0 and stats['latency-total-ns'] >= stats['latency-max-ns'], stats
    qemu_io(guest_uri, 'write -P 0x63 0 64k')  # already copied: no wait counted
    stats = [n['x-cbw-stats'] for n in q.execute('query-named-block-nodes') if n['node-name'] == 'cbw'][0]
    assert stats['requests'] == 2, stats
    # And back, again together; the old single-parent form still works for one user.
    q.execute('transaction', actions=[replace('guest', 'disk'), replace('g2', 'disk')])
    q.execute('block-export-del', id='g2')
    q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'cbw'})
    q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'disk'})
    q.execute('blockdev-del', **{'node-name': 'cbw'})
    q.execute('blockdev-del', **{'node-name': 'fl'})
    qemu_io(guest_uri, 'read -P 0x63 0 64k', 'read -P 0x62 1M 64k', read_only=True)
