"""cycle_request: the training queue that `twin worker` drains (issue 21)

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-02
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'cycle_request',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('trigger', sa.String(), nullable=False),
        sa.Column('force', sa.Boolean(), nullable=False),
        sa.Column('status', sa.Enum('queued', 'running', 'done', 'failed', name='cyclerequeststatus'), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('worker', sa.String(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('cycle_id', sa.Integer(), nullable=True),
        sa.Column('outcome', sa.String(), nullable=False),
        sa.Column('report', sa.Text(), nullable=False),
        sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['owner_id'], ['owner.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_cycle_request_owner_id', 'cycle_request', ['owner_id'])
    op.create_index('ix_cycle_request_status', 'cycle_request', ['status'])


def downgrade() -> None:
    op.drop_index('ix_cycle_request_status', table_name='cycle_request')
    op.drop_index('ix_cycle_request_owner_id', table_name='cycle_request')
    op.drop_table('cycle_request')
    sa.Enum(name='cyclerequeststatus').drop(op.get_bind(), checkfirst=True)
