"""The data layout of QEMU's image-fleecing test (research/qemu-fleecing.md §5.1), shared by
the fleecing and backup tests: patterns written before the snapshot, guest overwrites after
it, ranges that read as zeroes, and what the disk still holds of the patterns."""

MiB = 1 << 20
SIZE = 64 * MiB
PATTERNS = [('0x5d', '0', '64k'), ('0xd5', '1M', '64k'), ('0xdc', '32M', '64k'), ('0xcd', '0x3ff0000', '64k')]
OVERWRITES = [('0xab', '0', '64k'), ('0xad', '0x00f8000', '64k'), ('0x1d', '0x2008000', '64k'), ('0xea', '0x3fe0000', '64k')]
ZEROES = [('0', '0x00f8000', '32k'), ('0', '0x2010000', '32k'), ('0', '0x3fe0000', '64k')]
REMAINDER = [('0xd5', '0x108000', '32k'), ('0xdc', '32M', '32k'), ('0xcd', '0x3ff0000', '64k')]


def reads(table):
    """qemu-io commands that verify each (pattern, offset, length) of the table."""
    return ['read -P %s %s %s' % p for p in table]


def writes(table):
    """qemu-io commands that write each (pattern, offset, length) of the table."""
    return ['write -P %s %s %s' % p for p in table]
