"""latency: predicted_ms of closed-loop path checks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The closed-loop check (the real cascade timed on a forced path) is stored as a `dse_latency` row of
kind "path"; this nullable column keeps the sum of component means it was compared with. `kind`
is a plain string column without a CHECK constraint, so the new kinds ("upsample", "path") need
no schema change.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.add_column(sa.Column('predicted_ms', sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.drop_column('predicted_ms')
