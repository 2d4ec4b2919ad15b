"""business: the twin inside the owner's real chats (Telegram Business connection, chats, messages, drafts)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'business_connection',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('connection_id', sa.String(length=128), nullable=False),
        sa.Column('user_chat_id', sa.BigInteger(), nullable=False),
        sa.Column('can_reply', sa.Boolean(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('paused', sa.Boolean(), nullable=False),
        sa.Column('rights', sa.JSON(), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['owner.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('owner_id'),
        sa.UniqueConstraint('connection_id'),
    )
    op.create_table(
        'business_chat',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('chat_id', sa.BigInteger(), nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('contact_name', sa.String(), nullable=True),
        sa.Column('muted', sa.Boolean(), nullable=False),
        sa.Column('last_contact_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['owner.id']),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('owner_id', 'chat_id'),
    )
    op.create_index(op.f('ix_business_chat_owner_id'), 'business_chat', ['owner_id'], unique=False)
    op.create_table(
        'business_message',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('business_chat_id', sa.Integer(), nullable=False),
        sa.Column('telegram_message_id', sa.BigInteger(), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=True),
        sa.Column('sample_id', sa.Integer(), nullable=True),
        sa.Column('feedback_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['owner.id']),
        sa.ForeignKeyConstraint(['business_chat_id'], ['business_chat.id']),
        sa.ForeignKeyConstraint(['message_id'], ['message.id']),
        sa.ForeignKeyConstraint(['sample_id'], ['writing_sample.id']),
        sa.ForeignKeyConstraint(['feedback_id'], ['feedback.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('business_chat_id', 'telegram_message_id'),
    )
    op.create_index(op.f('ix_business_message_owner_id'), 'business_message', ['owner_id'], unique=False)
    op.create_index(op.f('ix_business_message_business_chat_id'), 'business_message', ['business_chat_id'],
                    unique=False)
    op.create_table(
        'business_draft',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('draft_id', sa.Integer(), nullable=False),
        sa.Column('business_chat_id', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('send_state', sa.String(length=16), nullable=True),
        sa.Column('sent_text', sa.Text(), nullable=True),
        sa.Column('sent_message_id', sa.BigInteger(), nullable=True),
        sa.Column('owner_message_id', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['owner.id']),
        sa.ForeignKeyConstraint(['draft_id'], ['draft.id']),
        sa.ForeignKeyConstraint(['business_chat_id'], ['business_chat.id']),
        sa.ForeignKeyConstraint(['owner_message_id'], ['message.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('draft_id'),
    )
    op.create_index(op.f('ix_business_draft_owner_id'), 'business_draft', ['owner_id'], unique=False)
    op.create_index(op.f('ix_business_draft_business_chat_id'), 'business_draft', ['business_chat_id'],
                    unique=False)


def downgrade() -> None:
    for table in ('business_draft', 'business_message', 'business_chat'):
        op.drop_table(table)
    op.drop_table('business_connection')
