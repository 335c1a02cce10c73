"""Partition ownership between several host processes: each batch leases its writer group.

Every ``host serve`` of a database runs the engine's writers (host.engine: writer = partition mod
``host.writers``) and may post any partition; what keeps two hosts from posting the same group at once
is a transaction-scoped advisory lock per writer group, taken in the batch's BEGIN round trip
(``begin_sql``): the lease lasts exactly as long as the batch's transaction. Why this and not a lease
table (host/README.md, "Several host processes"):

- the switch needs no knowledge of partitions (it could not compute them: the PAN hash is keyed in the
  HSM); any host answers any card, so a request never bounces between hosts;
- fencing is the transaction itself: a host that lost its connection lost its lock with it and cannot
  commit; there is no epoch to carry because no write happens outside the locked transaction;
- takeover is the time PostgreSQL needs to end the dead host's transaction: at once when its process
  died (the kernel closes its sockets), at most ``FENCE_SECONDS`` when its machine or network went
  silent (``idle_in_transaction_session_timeout``, set with the lock, ends a batch idle that long);
- the chain (host.chain, one per writer group) is read in the batch under the same lock: the head a
  batch links to is always the last one committed on its chain, by whichever host, so it never forks.

Cost on the hot path: no statement of its own (two more commands in BEGIN's simple-query string, and
the head's index probe in the batch's read statement; bench.host measures it).

Every host of a database must run the same ``host.writers`` (the lock names a group, and groups must be
the same partitions everywhere): with different counts two hosts could lock the same funding accounts
in two orders, which PostgreSQL would resolve as a deadlock (a batch retried one by one, never money
lost, but slow).
"""

from __future__ import annotations

import functools
from typing import Final

# The advisory lock class of the writer groups: pg_advisory_xact_lock(int, int) with this as the first
# key and the group as the second (the two-key space: never equal to host.chain's one-key SHARED_LOCK).
GROUP_LOCK_CLASS: Final = 0x6C65_6477  # "ledw"
# A batch idle in its transaction this long is ended by PostgreSQL (its host is gone or stuck): the
# convention's lease_seconds (issue 20), far above a batch's own gaps between statements (milliseconds).
FENCE_SECONDS: Final = 5
# The session variable naming the batch's chain; the read statement reads the chain's head through it.
CHAIN_SETTING: Final = "payswitch.chain"


@functools.cache
def begin_sql(group: int) -> str:
    """What a batch of ``group`` adds to its BEGIN string: the fence, the chain, the group's lock.

    Built once per group (a constant per writer): the lock is taken before the batch's first read, so
    that read sees every batch committed before it on this group, by any host."""
    if group < 0:
        raise ValueError("writer groups are numbered from 0")
    return (
        f"; SET LOCAL idle_in_transaction_session_timeout = '{FENCE_SECONDS}s'"
        f"; SET LOCAL {CHAIN_SETTING} = '{group}'"
        f"; SELECT pg_advisory_xact_lock({GROUP_LOCK_CLASS}, {group})"
    )


# The batch chain's head, read in the batch's read statement (host.ledger._READ_SQL) as 'seq hash', or
# NULL when the chain is empty or the batch has none (the setting unset: CLI batches, tests).
HEAD_SQL: Final = (
    "(SELECT hb.seq::text || ' ' || hb.hash FROM ledger_batches hb"
    f" WHERE hb.chain = nullif(current_setting('{CHAIN_SETTING}', true), '')::int"
    " ORDER BY hb.seq DESC LIMIT 1)"
)


def parse_head(value: str | None) -> tuple[int, str] | None:
    """(seq, hash) of ``HEAD_SQL``'s answer; None for an empty chain."""
    if value is None:
        return None
    seq, digest = value.split(" ", 1)
    return int(seq), digest
