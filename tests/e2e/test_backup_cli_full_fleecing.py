"""`fleece backup` when the fleecing image runs out of space mid-backup.

Made real, not simulated: the fleecing file lives on a 2 MiB tmpfs mounted for the test
(the tests run as root here; a failing mount fails the test), while the guest rewrites the
whole 8 MiB disk during the backup, so copy-before-write hits a real ENOSPC from the kernel.
Expected (default --on-cbw-error break-snapshot): the guest's writes all succeed, the CLI
exits 1 naming the full fleecing storage, and nothing is left behind (no filter, job,
bitmap or fleecing file), the graph as before."""

import subprocess

import pytest

from test_backup_cli import (assert_guest_unharmed_and_graph_restored, events, guest,  # noqa: F401
                             set_job_speed, start_slow_backup_under_writes)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / 'small'
    mnt.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2M', 'tmpfs', str(mnt)], check=True)
    yield mnt
    subprocess.run(['umount', str(mnt)], check=True)


def test_full_fleecing_storage_fails_the_backup_not_the_guest(guest, tmp_path, small_fs):
    d, disk, guest_uri, targets = guest
    q = d.qmp
    target, before, writer, cli = start_slow_backup_under_writes(guest, tmp_path,
                                                                 '--fleecing', str(small_fs))
    # 4 KiB writes all over the disk: 128 clusters of 64 KiB to copy, room for about 32.
    writer.wait_for_writes(3000)
    set_job_speed(q, 0)  # the job now reads the broken snapshot and fails
    rc, lines, err = cli.finish()
    # break-snapshot: no guest write failed, and it goes on through the restored graph
    assert_guest_unharmed_and_graph_restored(q, writer, before, str(tmp_path), str(small_fs))
    assert rc == 1, (rc, lines, err)
    summary = events(lines, 'summary')[-1]
    assert not summary['ok'] and summary['graph-restored'], summary
    assert 'fleecing storage is full' in summary['error'] and str(small_fs) in summary['error'], summary
    assert summary['cbw-errors'] >= 1, summary
    assert not [n for n in q.execute('query-named-block-nodes') if n.get('dirty-bitmaps')]
    assert list(small_fs.iterdir()) == []
