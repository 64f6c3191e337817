"""candidate: bootstrap intervals of the prediction

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

`dse pareto` computes bootstrap intervals (mIoU, drop versus the baseline, mean latency, exit
rates) for the candidates of the stored front and keeps them with the candidate, so reports and
`--json` show what the prediction rests on. Nullable: older runs and later fronts have none.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('dse_candidate', schema=None) as batch_op:
        batch_op.add_column(sa.Column('intervals', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('dse_candidate', schema=None) as batch_op:
        batch_op.drop_column('intervals')
