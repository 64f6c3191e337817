"""latency: provenance of samples not timed in-process

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Latency rows imported from a probe run on another device (`dse profile --import`) keep where
they came from: the pack's and the results file's sha256, the probe's format version, when it
ran and the device's load. Rows timed in-process by `dse profile` leave it NULL.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provenance', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.drop_column('provenance')
