"""Push backups (research/qemu-fleecing.md §1.4, §4, §5.3) against fleeced: the fleecing
scheme (CBW + snapshot-access, job from the snapshot) and the job-inserted filter (job
from a disk that has writers), to file and NBD targets, checked against a copy of the
disk taken at the backup's start."""


import pytest

from backup_testlib import (MiB, FioGuest, Nbdkit, copy_file, export_children, job_events,
                            names, node_names, qemu_img_compare, random_fill, until_status,
                            wait_started)
from backup_testlib import env  # noqa: F401 - the fixture the tests take
from fleece_testlib import QmpError, make_raw, qemu_io
from fleecing_layout import SIZE, PATTERNS, OVERWRITES, ZEROES, reads, writes


def add_disk(q, tmp, name, content='random'):
    path = str(tmp / (name + '.raw'))
    if content == 'random':
        random_fill(path, SIZE, seed=len(name))
    else:
        make_raw(path, SIZE)
        qemu_io(path, *writes(PATTERNS))
    q.execute('blockdev-add', driver='file', filename=path, **{'node-name': name})
    return path


def start_nbd_server(q, tmp):
    sock = str(tmp / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    return sock


def add_fleecing(q, tmp, disk):
    """CBW + snapshot-access over `disk` (the snapshot point), guest export on the CBW."""
    fleece = str(tmp / ('fleece-%s.raw' % disk))
    make_raw(fleece, SIZE)
    q.execute('blockdev-add', driver='file', filename=fleece, discard='unmap', **{'node-name': 'temp-' + disk})
    q.execute('blockdev-add', driver='copy-before-write', file=disk, target='temp-' + disk, **{'node-name': 'cbw-' + disk})
    q.execute('blockdev-add', driver='snapshot-access', file='cbw-' + disk, **{'node-name': 'snap-' + disk})
    return 'cbw-' + disk, 'snap-' + disk, fleece


def add_target(q, tmp, procs, kind, name='target'):
    """Returns a function that copies the finished target into a local raw file."""
    if kind == 'file':
        path = str(tmp / (name + '.raw'))
        make_raw(path, SIZE)
        q.execute('blockdev-add', driver='file', filename=path, **{'node-name': name})
        return lambda out: copy_file(path, out)
    srv = Nbdkit(tmp, name, ['memory', str(SIZE)])
    procs.append(srv)
    q.execute('blockdev-add', **srv.blockdev(name))
    return srv.copy_to


@pytest.mark.parametrize('kind', ['file', 'nbd'])
def test_push_variant_53(env, kind):
    """§5.3: fleecing graph, backup of fl-access held open with speed=1 while the guest
    overwrites, then released; the target holds the snapshot."""
    d, tmp, procs = env
    q = d.qmp
    source = add_disk(q, tmp, 'source', content='patterns')
    at_start = str(tmp / 'at-start.raw')
    copy_file(source, at_start)
    cbw, snap, _ = add_fleecing(q, tmp, 'source')
    sock = start_nbd_server(q, tmp)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': cbw})
    fetch = add_target(q, tmp, procs, kind)
    q.execute('blockdev-backup', device=snap, target='target', sync='full', speed=1, **{'job-id': 'push-backup'})
    qemu_io('nbd+unix:///guest?socket=' + sock, *writes(OVERWRITES))
    assert len(q.execute('query-block-jobs')) == 1  # CBW happened while the job ran
    q.execute('block-job-set-speed', device='push-backup', speed=0)
    ev = q.wait_event('BLOCK_JOB_COMPLETED')
    assert ev['data'] == {'device': 'push-backup', 'len': SIZE, 'offset': SIZE, 'speed': 0, 'type': 'backup'}
    q.execute('blockdev-del', **{'node-name': 'target'})
    out = str(tmp / 'out.raw')
    fetch(out)
    qemu_img_compare(at_start, out)
    qemu_io(out, *reads(PATTERNS + ZEROES), read_only=True)


def test_manual_finalize_and_dismiss_event_order(env):
    d, tmp, procs = env
    q = d.qmp
    add_disk(q, tmp, 'disk')
    add_target(q, tmp, procs, 'file')
    q.execute('blockdev-backup', device='disk', target='target', sync='full',
              **{'job-id': 'bk', 'auto-finalize': False, 'auto-dismiss': False})
    evs = job_events(q, 'bk', lambda e: e['event'] == 'BLOCK_JOB_PENDING')
    assert names(evs) == ['created', 'running', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_PENDING']
    assert q.execute('query-jobs')[0]['status'] == 'pending'
    q.execute('job-finalize', id='bk')
    evs = job_events(q, 'bk', until_status('concluded'))
    assert names(evs) == ['BLOCK_JOB_COMPLETED', 'concluded']
    assert q.execute('query-jobs')[0]['status'] == 'concluded'
    q.execute('job-dismiss', id='bk')
    assert names(job_events(q, 'bk', until_status('null'))) == ['null']
    assert q.execute('query-jobs') == []


@pytest.mark.parametrize('kind', ['file', 'nbd'])
@pytest.mark.parametrize('scheme', ['job-filter', 'fleecing'])
def test_backup_under_fio_equals_disk_at_snapshot_point(env, scheme, kind):
    """fio hammers random 4 KiB writes for the whole backup; the target must equal the disk
    at the snapshot point, whether the job inserts its own filter on the written disk or
    backs up the snapshot-access node of a fleecing CBW."""
    d, tmp, procs = env
    q = d.qmp
    disk = add_disk(q, tmp, 'disk')
    at_start = str(tmp / 'at-start.raw')
    copy_file(disk, at_start)
    before = node_names(q)
    if scheme == 'fleecing':
        export_node, device, _ = add_fleecing(q, tmp, 'disk')
    else:
        export_node, device = 'disk', 'disk'
    sock = start_nbd_server(q, tmp)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': export_node})
    fetch = add_target(q, tmp, procs, kind)
    nodes_before_job = node_names(q)
    # 16 MiB/s keeps the job busy for about 4 s while fio writes.
    q.execute('blockdev-backup', device=device, target='target', sync='full', speed=16 * MiB,
              **{'job-id': 'bk', 'filter-node-name': 'bk-cbw', 'x-perf': {'max-workers': 8}})
    fio = FioGuest(tmp, 'nbd+unix:///guest?socket=' + sock, runtime=60)
    if scheme == 'job-filter':
        # Every parent of the disk moved onto the job's filter, the export included.
        assert export_children(q) == ['bk-cbw']
        graph = q.execute('x-debug-query-block-graph')
        byid = {n['id']: n['name'] for n in graph['nodes']}
        edges = {(byid[e['parent']], e['name']): byid[e['child']] for e in graph['edges']}
        assert edges[('bk-cbw', 'file')] == 'disk' and edges[('bk-cbw', 'target')] == 'target'
    else:
        assert export_children(q) == [export_node]
    evs = job_events(q, 'bk', until_status('null'))
    job = fio.stop()
    assert job['write']['total_ios'] > 1000
    completed = [e for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED']
    assert completed and 'error' not in completed[0]['data'], evs
    assert completed[0]['data']['offset'] == completed[0]['data']['len'] == SIZE
    assert names(evs) == ['created', 'running', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED',
                          'concluded', 'null']
    # The job's filter is gone and the graph is exactly as before the job.
    assert export_children(q) == [export_node]
    assert node_names(q) == nodes_before_job
    q.execute('block-export-del', id='guest')
    q.execute('nbd-server-stop')
    q.execute('blockdev-del', **{'node-name': 'target'})
    out = str(tmp / 'out.raw')
    fetch(out)
    qemu_img_compare(at_start, out)
    if scheme == 'fleecing':
        for n in ('snap-disk', 'cbw-disk', 'temp-disk'):
            q.execute('blockdev-del', **{'node-name': n})
        assert node_names(q) == before
    # The guest's writes reached the disk.
    with pytest.raises(AssertionError):
        qemu_img_compare(at_start, disk)


def test_source_without_writers_stays_immutable(env):
    """No filter for a source nobody writes; a writer that turns up later is refused."""
    d, tmp, procs = env
    q = d.qmp
    add_disk(q, tmp, 'disk')
    add_target(q, tmp, procs, 'file')
    before = node_names(q)
    q.execute('blockdev-backup', device='disk', target='target', sync='full', speed=1,
              **{'job-id': 'bk', 'filter-node-name': 'bk-cbw'})
    assert node_names(q) == before  # no filter inserted
    start_nbd_server(q, tmp)
    with pytest.raises(QmpError) as e:
        q.execute('block-export-add', type='nbd', id='late', name='late', writable=True, **{'node-name': 'disk'})
    assert 'write' in e.value.desc and "job 'bk'" in e.value.desc
    q.execute('block-job-cancel', device='bk')
    evs = job_events(q, 'bk', until_status('null'))
    assert names(evs)[-4:] == ['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']
    q.execute('block-export-add', type='nbd', id='late', name='late', writable=True, **{'node-name': 'disk'})


def test_pause_resume_speed_cancel_with_job_filter(env):
    d, tmp, procs = env
    q = d.qmp
    add_disk(q, tmp, 'disk')
    sock = start_nbd_server(q, tmp)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'disk'})
    add_target(q, tmp, procs, 'nbd')
    before = node_names(q)
    q.execute('blockdev-backup', device='disk', target='target', sync='full', speed=4 * MiB, **{'job-id': 'bk'})
    filters = [n for n in node_names(q) if n not in before]
    assert len(filters) == 1 and filters[0].startswith('#block')  # automatic name
    assert export_children(q) == filters
    wait_started(q, 'bk')
    q.execute('job-pause', id='bk')
    job_events(q, 'bk', until_status('paused'))
    info = q.execute('query-block-jobs')[0]
    assert info['paused'] is True and info['status'] == 'paused'
    offset = info['offset']
    qemu_io('nbd+unix:///guest?socket=' + sock, *writes(OVERWRITES))  # CBW while paused
    q.execute('job-resume', id='bk')
    job_events(q, 'bk', until_status('running'))
    q.execute('block-job-set-speed', device='bk', speed=1)
    info = q.execute('query-block-jobs')[0]
    assert info['speed'] == 1 and info['offset'] >= offset
    q.execute('block-job-cancel', device='bk')
    evs = job_events(q, 'bk', until_status('null'))
    assert names(evs) == ['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']
    data = [e for e in evs if e['event'] == 'BLOCK_JOB_CANCELLED'][0]['data']
    assert data['len'] == SIZE and data['offset'] < SIZE and data['speed'] == 1
    assert node_names(q) == before and export_children(q) == ['disk']
    qemu_io('nbd+unix:///guest?socket=' + sock, *reads(OVERWRITES), read_only=True)


def test_sync_none_copies_only_what_the_guest_overwrites(env):
    """The old fleecing job: sync=none runs until cancelled; the target receives the old
    data of each cluster before the guest's first write to it, and nothing else."""
    d, tmp, procs = env
    q = d.qmp
    disk = add_disk(q, tmp, 'disk', content='patterns')
    sock = start_nbd_server(q, tmp)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'disk'})
    fetch = add_target(q, tmp, procs, 'file')
    q.execute('blockdev-backup', device='disk', target='target', sync='none', **{'job-id': 'bk'})
    qemu_io('nbd+unix:///guest?socket=' + sock, *writes(OVERWRITES))
    assert q.execute('query-jobs')[0]['status'] == 'running'
    q.execute('job-cancel', id='bk')
    evs = job_events(q, 'bk', until_status('null'))
    assert 'BLOCK_JOB_CANCELLED' in names(evs)
    q.execute('blockdev-del', **{'node-name': 'target'})
    out = str(tmp / 'out.raw')
    fetch(out)
    # Old data of the 64 KiB clusters the guest touched (0, 0xf0000-0x10ffff, 32M-32M+128k,
    # 0x3fe0000); the untouched cluster at 0x3ff0000 (pattern 0xcd) was never copied.
    qemu_io(out, 'read -P 0x5d 0 64k', 'read -P 0 0xf0000 0x10000', 'read -P 0xd5 1M 64k',
            'read -P 0xdc 32M 64k', 'read -P 0 0x3fe0000 64k', 'read -P 0 0x3ff0000 64k',
            read_only=True)
    qemu_io(disk, *reads(OVERWRITES), read_only=True)


def test_transaction_grouped_backups_share_one_point_in_time(env):
    d, tmp, procs = env
    q = d.qmp
    disks = {}
    for name in ('a', 'b'):
        disks[name] = add_disk(q, tmp, name)
        copy_file(disks[name], str(tmp / ('at-start-%s.raw' % name)))
        add_target(q, tmp, procs, 'file', name='t' + name)
    sock = start_nbd_server(q, tmp)
    for name in ('a', 'b'):
        q.execute('block-export-add', type='nbd', id=name, name=name, writable=True, **{'node-name': name})
    before = node_names(q)
    q.execute('transaction', actions=[
        {'type': 'blockdev-backup', 'data': {'job-id': 'j' + n, 'device': n, 'target': 't' + n,
                                             'sync': 'full', 'speed': 8 * MiB}} for n in ('a', 'b')],
        properties={'completion-mode': 'grouped'})
    assert sorted(export_children(q)) == sorted(n for n in node_names(q) if n not in before)
    for name in ('a', 'b'):
        qemu_io('nbd+unix:///%s?socket=%s' % (name, sock), 'write -P 0x77 0 8M', 'write -P 0x66 60M 4M')
    for name in ('a', 'b'):
        evs = job_events(q, 'j' + name, until_status('null'))
        assert names(evs)[-5:] == ['waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']
    assert node_names(q) == before
    for name in ('a', 'b'):
        q.execute('blockdev-del', **{'node-name': 't' + name})
        qemu_img_compare(str(tmp / ('at-start-%s.raw' % name)), str(tmp / ('t%s.raw' % name)))


def test_transaction_failing_action_rolls_back_everything(env):
    d, tmp, procs = env
    q = d.qmp
    add_disk(q, tmp, 'a')
    add_disk(q, tmp, 'b')
    add_target(q, tmp, procs, 'file', name='ta')
    start_nbd_server(q, tmp)
    q.execute('block-export-add', type='nbd', id='a', name='a', writable=True, **{'node-name': 'a'})
    before = node_names(q)
    with pytest.raises(QmpError) as e:
        q.execute('transaction', actions=[
            {'type': 'blockdev-backup', 'data': {'job-id': 'ja', 'device': 'a', 'target': 'ta', 'sync': 'full'}},
            {'type': 'blockdev-backup', 'data': {'job-id': 'jb', 'device': 'b', 'target': 'nope', 'sync': 'full'}}])
    assert 'nope' in e.value.desc
    assert node_names(q) == before and export_children(q) == ['a']
    assert q.execute('query-jobs') == []
    with pytest.raises(QmpError) as e:
        q.execute('transaction', actions=[{'type': 'no-such-action', 'data': {}}])
    assert 'no-such-action' in e.value.desc
    # The daemon keeps serving: the same backup alone works.
    q.execute('transaction', actions=[
        {'type': 'blockdev-backup', 'data': {'job-id': 'ja', 'device': 'a', 'target': 'ta', 'sync': 'full'}}])
    evs = job_events(q, 'ja', until_status('null'))
    assert 'BLOCK_JOB_COMPLETED' in names(evs)


def test_grouped_failure_cancels_the_other_job(env):
    d, tmp, procs = env
    q = d.qmp
    for name in ('a', 'b'):
        add_disk(q, tmp, name)
    add_target(q, tmp, procs, 'file', name='ta')
    bad = Nbdkit(tmp, 'tb', ['memory', str(SIZE), 'error-pwrite=EIO', 'error-pwrite-rate=100%'], filters=['error'])
    procs.append(bad)
    q.execute('blockdev-add', **bad.blockdev('tb'))
    q.execute('transaction', actions=[
        {'type': 'blockdev-backup', 'data': {'job-id': 'ja', 'device': 'a', 'target': 'ta', 'sync': 'full', 'speed': 4 * MiB}},
        {'type': 'blockdev-backup', 'data': {'job-id': 'jb', 'device': 'b', 'target': 'tb', 'sync': 'full'}}],
        properties={'completion-mode': 'grouped'})
    evb = job_events(q, 'jb', until_status('null'))
    assert [e['data'] for e in evb if e['event'] == 'BLOCK_JOB_ERROR'][0] == {'device': 'jb', 'operation': 'write', 'action': 'report'}
    assert [e for e in evb if e['event'] == 'BLOCK_JOB_COMPLETED'][0]['data']['error']
    eva = job_events(q, 'ja', until_status('null'))
    assert names(eva)[-4:] == ['aborting', 'BLOCK_JOB_CANCELLED', 'concluded', 'null']


def test_bad_arguments_are_clear_errors(env):
    d, tmp, procs = env
    q = d.qmp
    add_disk(q, tmp, 'disk')
    add_target(q, tmp, procs, 'file')
    cases = [
        ({'sync': 'sideways'}, 'sync'),
        ({'on-target-error': 'panic'}, 'on-target-error'),
        ({'x-perf': {'max-chunk': 4096}}, 'max-chunk'),
        ({'x-perf': {'max-workers': 0}}, 'max-workers'),
        ({'x-perf': {'bogus': 1}}, 'bogus'),
        ({'compress': True}, 'Compression'),
        ({'on-cbw-error': 'maybe'}, 'on-cbw-error'),
    ]
    for extra, word in cases:
        args = {'device': 'disk', 'target': 'target', 'sync': 'full', 'job-id': 'bk'}
        args.update(extra)
        with pytest.raises(QmpError) as e:
            q.execute('blockdev-backup', **args)
        assert word in e.value.desc, (extra, e.value.desc)
    start_nbd_server(q, tmp)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'disk'})
    with pytest.raises(QmpError) as e:
        q.execute('blockdev-backup', device='disk', target='target', sync='full', **{'discard-source': True})
    assert 'discard-source' in e.value.desc
    assert q.execute('query-jobs') == [] and export_children(q) == ['disk']
