#!/usr/bin/env python3
"""The anchor benchmark (../shared/bench/anchor_qsd.py) with one change for fleeced's S2:
the backup job gets `discard-source: true` and the fleece image `discard: unmap` (on the
file node, and on the qcow2 node with --fleece-fmt qcow2, whose pass-discard-request then
discards freed clusters in the file), so each chunk that landed on the remote target is
released from the fleecing image while the job runs (QEMU >= 9.1 semantics; QSD 7.2
rejects the option). Everything else, including the command line and the verification,
is the shared harness's. Each S2 record also gets `fleece_end_bytes`: the fleecing
image's allocated size when the job completed (the peak is the harness's
`fleece_peak_bytes`).

    python3 bench/anchor_fleeced_discard.py --qsd build/bin/fleeced --fleece-fmt raw --scenarios S2
    # short (about a minute):
    python3 bench/anchor_fleeced_discard.py --qsd build/bin/fleeced --fleece-fmt qcow2 \\
        --scenarios S2 --reps 1 --size 256M --runtime 8
"""

import os
import sys

BENCH = os.environ.get('ANCHOR_DIR',
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                    'shared', 'bench'))
sys.path.insert(0, os.path.abspath(BENCH))
import anchor_qsd  # noqa: E402
import harness  # noqa: E402


class DiscardSourceDriver(anchor_qsd.QsdDriver):
    name = 'fleeced+discard-source'

    def _file_node(self, node, path):
        d = super()._file_node(node, path)
        if node == 'fleece-file':
            d['discard'] = 'unmap'
        return d

    def q(self, cmd, args=None):
        if cmd == 'blockdev-backup' and self.scn == 'S2':
            args = dict(args, **{'discard-source': True})
        if (cmd == 'blockdev-add' and args and args.get('node-name') == 'fleece'
                and args.get('driver') == 'qcow2'):
            args = dict(args, discard='unmap')
        return super().q(cmd, args)

    def poll_backup(self, timeout):
        r = super().poll_backup(timeout)
        if r is not None and self.fleece:
            self.fleece_end = os.stat(self.fleece).st_blocks * 512
        return r

    def info(self):
        d = super().info()
        d['fleece_end_bytes'] = getattr(self, 'fleece_end', None)
        return d


if __name__ == '__main__':
    harness.main(DiscardSourceDriver)
