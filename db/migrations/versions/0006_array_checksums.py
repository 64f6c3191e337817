"""arrays: a sha256 checksum in front of every stored array

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Every binary array column (accuracy edges and counts, latency samples) held bare `.npy` bytes, so a
flipped bit or an edited count was read back as a valid number. From this revision each holds
`MAGIC + sha256(npy) + npy` (see db/arrays.py) and reading verifies it. No column changes: the
existing values are rewritten in place (their current bytes are what gets sealed, so run
`dse db upgrade` on a store you trust). The tag and hashing are repeated here, not imported, so
this revision keeps doing what it did when db/arrays.py changes.
"""
import hashlib
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

MAGIC = b"DSEARR1\x00"
DIGEST = 32
COLUMNS = {
    "dse_accuracy_profile": ("edges",),
    "dse_accuracy_chunk": ("tp", "fp", "fn", "hist"),
    "dse_latency": ("samples_ms",),
}
BATCH = 500


def _rewrite(table: str, columns: tuple[str, ...], change) -> None:  # noqa: ANN001
    conn = op.get_bind()
    t = sa.table(table, sa.column("id", sa.Integer), *(sa.column(c, sa.LargeBinary) for c in columns))
    last = 0
    while True:
        rows = conn.execute(
            sa.select(t).where(t.c.id > last).order_by(t.c.id).limit(BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            values = {c: change(bytes(getattr(row, c))) for c in columns}
            conn.execute(sa.update(t).where(t.c.id == row.id).values(**values))
        last = rows[-1].id


def _seal(blob: bytes) -> bytes:
    if blob.startswith(MAGIC):
        return blob
    return MAGIC + hashlib.sha256(blob).digest() + blob


def _unseal(blob: bytes) -> bytes:
    return blob[len(MAGIC) + DIGEST:] if blob.startswith(MAGIC) else blob


def upgrade() -> None:
    """Seal every stored array with its checksum."""
    for table, columns in COLUMNS.items():
        _rewrite(table, columns, _seal)


def downgrade() -> None:
    """Back to bare .npy bytes."""
    for table, columns in COLUMNS.items():
        _rewrite(table, columns, _unseal)
