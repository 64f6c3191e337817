"""latency: measured or predicted rows

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

A few-shot profile (`dse profile --few-shot K --reference ...`) measures K components and
predicts the others from reference devices; predicted rows are stored with `source`
'predicted' (their model and cross-validated error in `quality`) and are never read as measured.
Rows of older stores are measured.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=20),
                                      server_default='measured', nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.drop_column('source')
