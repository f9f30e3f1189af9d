"""Backup error actions (research/qemu-fleecing.md §4.1, §4.2) with nbdkit's error filter on
the remote target, switched on mid-job by a trigger file: report, ignore and stop behave
like QEMU's, and the guest never sees an error."""

import os

from backup_testlib import (MiB, Nbdkit, copy_file, export_children, job_events, names,
                            node_names, qemu_img_compare, random_fill, until_status,
                            wait_started)
from backup_testlib import env  # noqa: F401 - the fixture the tests take
from fleece_testlib import make_raw, qemu_io

SIZE = 64 * MiB


def make_env(env, scheme, rate):
    """Disk with random content, guest export, and a target that fails writes with EIO at
    `rate` while tmp/trigger exists."""
    d, tmp, procs = env
    q = d.qmp
    disk = str(tmp / 'disk.raw')
    random_fill(disk, SIZE)
    at_start = str(tmp / 'at-start.raw')
    copy_file(disk, at_start)
    q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
    device, export_node = 'disk', 'disk'
    if scheme == 'fleecing':
        fleece = str(tmp / 'fleece.raw')
        make_raw(fleece, SIZE)
        q.execute('blockdev-add', driver='file', filename=fleece, **{'node-name': 'temp'})
        q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp', **{'node-name': 'cbw'})
        q.execute('blockdev-add', driver='snapshot-access', file='cbw', **{'node-name': 'snap'})
        device, export_node = 'snap', 'cbw'
    sock = str(tmp / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': export_node})
    trigger = str(tmp / 'trigger')
    srv = Nbdkit(tmp, 'target', ['memory', str(SIZE), 'error=EIO', 'error-rate=%s' % rate,
                                 'error-file=' + trigger], filters=['error'])
    procs.append(srv)
    q.execute('blockdev-add', **srv.blockdev('target'))
    return q, device, 'nbd+unix:///guest?socket=' + sock, trigger, srv, at_start


def wait_progress(q, job_id, at_least):
    import time
    deadline = time.monotonic() + 60
    while True:
        jobs = q.execute('query-block-jobs')
        assert jobs, 'job ended early'
        if jobs[0]['offset'] >= at_least:
            return
        assert time.monotonic() < deadline, jobs
        time.sleep(0.05)


def guest_writes_succeed(uri):
    # Regions the job has not reached yet, so each write needs a copy-before-write first.
    qemu_io(uri, 'write -P 0x31 60M 1M', 'write -P 0x32 62M 64k', 'read -P 0x31 60M 1M')


def test_report_fails_the_job_and_not_the_guest(env):
    q, device, uri, trigger, srv, _ = make_env(env, 'fleecing', '100%')
    q.execute('blockdev-backup', device=device, target='target', sync='full', speed=8 * MiB,
              **{'job-id': 'bk', 'on-target-error': 'report'})
    wait_progress(q, 'bk', 4 * MiB)
    open(trigger, 'w').close()
    guest_writes_succeed(uri)
    evs = job_events(q, 'bk', until_status('null'))
    seq = names(evs)
    assert seq[-5:] == ['BLOCK_JOB_ERROR', 'aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null'], seq
    err = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_ERROR'][0]
    assert err == {'device': 'bk', 'operation': 'write', 'action': 'report'}
    done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED'][0]
    assert done['error'] == 'Input/output error' and done['offset'] < done['len']


def test_ignore_retries_until_the_backup_is_complete(env):
    q, device, uri, trigger, srv, at_start = make_env(env, 'fleecing', '30%')
    q.execute('blockdev-backup', device=device, target='target', sync='full', speed=16 * MiB,
              **{'job-id': 'bk', 'on-target-error': 'ignore', 'x-perf': {'max-chunk': 256 * 1024}})
    wait_progress(q, 'bk', 4 * MiB)
    open(trigger, 'w').close()
    guest_writes_succeed(uri)
    evs = job_events(q, 'bk', until_status('null'))
    errors = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_ERROR']
    assert errors and all(e == {'device': 'bk', 'operation': 'write', 'action': 'ignore'} for e in errors)
    seq = [s for s in names(evs) if s != 'BLOCK_JOB_ERROR']
    assert seq == ['created', 'running', 'paused', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null'], seq
    done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED'][0]
    assert 'error' not in done and done['offset'] == done['len'] == SIZE
    os.unlink(trigger)
    out = os.path.join(os.path.dirname(trigger), 'out.raw')
    srv.copy_to(out)
    qemu_img_compare(at_start, out)


def test_stop_pauses_and_resume_finishes(env):
    q, device, uri, trigger, srv, at_start = make_env(env, 'fleecing', '100%')
    q.execute('blockdev-backup', device=device, target='target', sync='full', speed=8 * MiB,
              **{'job-id': 'bk', 'on-target-error': 'stop'})
    wait_started(q, 'bk')
    wait_progress(q, 'bk', 4 * MiB)
    open(trigger, 'w').close()
    evs = job_events(q, 'bk', until_status('paused'))
    assert names(evs)[-2:] == ['BLOCK_JOB_ERROR', 'paused']
    assert evs[-2]['data'] == {'device': 'bk', 'operation': 'write', 'action': 'stop'}
    info = q.execute('query-block-jobs')[0]
    assert info['status'] == 'paused' and info['io-status'] == 'failed' and info['paused']
    guest_writes_succeed(uri)
    os.unlink(trigger)
    q.execute('block-job-set-speed', device='bk', speed=0)
    q.execute('job-resume', id='bk')
    evs = job_events(q, 'bk', until_status('null'))
    assert names(evs) == ['running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']
    done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED'][0]
    assert 'error' not in done and done['offset'] == done['len'] == SIZE
    out = os.path.join(os.path.dirname(trigger), 'out.raw')
    srv.copy_to(out)
    qemu_img_compare(at_start, out)


def test_job_filter_target_errors_break_the_snapshot_not_the_guest(env):
    """The job's own filter copies to the failing target too: by default the guest write
    still succeeds, the snapshot breaks and the job fails; the graph is restored."""
    q, device, uri, trigger, srv, _ = make_env(env, 'job-filter', '100%')
    before = node_names(q)
    q.execute('blockdev-backup', device=device, target='target', sync='full', speed=8 * MiB,
              **{'job-id': 'bk', 'filter-node-name': 'bk-cbw'})
    assert export_children(q) == ['bk-cbw']
    wait_progress(q, 'bk', 4 * MiB)
    open(trigger, 'w').close()
    guest_writes_succeed(uri)
    evs = job_events(q, 'bk', until_status('null'))
    done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED'][0]
    assert done.get('error'), evs
    assert names(evs)[-4:] == ['aborting', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']
    assert node_names(q) == before and export_children(q) == ['disk']


def test_job_filter_break_guest_write_fails_the_guest_write(env):
    q, device, uri, trigger, srv, _ = make_env(env, 'job-filter', '100%')
    q.execute('blockdev-backup', device=device, target='target', sync='full', speed=1,
              **{'job-id': 'bk', 'on-cbw-error': 'break-guest-write'})
    wait_progress(q, 'bk', 1)  # the job's first chunk is on the target: the job now sleeps
    open(trigger, 'w').close()
    out = qemu_io(uri, 'write -P 0x31 60M 64k', check=False)
    assert 'write failed' in out, out
    os.unlink(trigger)
    qemu_io(uri, 'write -P 0x31 60M 64k')  # the snapshot held: the next write copies and goes on
    q.execute('block-job-set-speed', device='bk', speed=0)
    evs = job_events(q, 'bk', until_status('null'))
    done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED'][0]
    assert 'error' not in done, [(e['event'], e['data'], e['timestamp']['microseconds']) for e in evs]
