"""version prompt: the bot's question for the owner's version of a draft survives a restart

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('version_prompt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('draft_id', sa.Integer(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('chat_id', sa.BigInteger(), nullable=False),
    sa.Column('prompt_message_id', sa.BigInteger(), nullable=False),
    sa.Column('open', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['draft_id'], ['draft.id'], ),
    sa.ForeignKeyConstraint(['owner_id'], ['owner.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('chat_id', 'prompt_message_id')
    )
    with op.batch_alter_table('version_prompt', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_version_prompt_draft_id'), ['draft_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_version_prompt_owner_id'), ['owner_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('version_prompt', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_version_prompt_owner_id'))
        batch_op.drop_index(batch_op.f('ix_version_prompt_draft_id'))

    op.drop_table('version_prompt')
