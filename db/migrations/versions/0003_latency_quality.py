"""latency: measurement quality per row and per profile

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

The interleaved timing protocol (profiling.protocol) judges every component's spread and the
machine's load. `dse_latency` gets `noisy` (stored although unstable, by the user's explicit
choice) and `quality` (the row's spread figures); `dse_profile_quality` keeps, per (model,
device, input shape, batch, dtype), how the latest profile run went. Rows of older stores were
measured without these checks: `noisy` false, `quality` null, no profile-quality row.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.add_column(sa.Column('noisy', sa.Boolean(), server_default=sa.false(),
                                      nullable=False))
        batch_op.add_column(sa.Column('quality', sa.JSON(), nullable=True))
    op.create_table(
        'dse_profile_quality',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('device_id', sa.Integer(), nullable=False),
        sa.Column('input_shape', sa.String(length=100), nullable=False),
        sa.Column('batch', sa.Integer(), nullable=False),
        sa.Column('dtype', sa.String(length=30), nullable=False),
        sa.Column('noisy', sa.Boolean(), nullable=False),
        sa.Column('quality', sa.JSON(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['device_id'], ['dse_device.id'],
                                name=op.f('fk_dse_profile_quality_device_id_dse_device'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['model_id'], ['dse_model.id'],
                                name=op.f('fk_dse_profile_quality_model_id_dse_model'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dse_profile_quality')),
        sa.UniqueConstraint('model_id', 'device_id', 'input_shape', 'batch', 'dtype',
                            name=op.f('uq_dse_profile_quality_model_id')),
    )
    with op.batch_alter_table('dse_profile_quality', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dse_profile_quality_model_id'), ['model_id'],
                              unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('dse_profile_quality', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dse_profile_quality_model_id'))
    op.drop_table('dse_profile_quality')
    with op.batch_alter_table('dse_latency', schema=None) as batch_op:
        batch_op.drop_column('quality')
        batch_op.drop_column('noisy')
