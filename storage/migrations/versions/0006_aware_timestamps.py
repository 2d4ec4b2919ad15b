"""aware timestamps: every timestamp column becomes DateTime(timezone=True), read back as aware UTC

PostgreSQL: `timestamp` becomes `timestamptz`; the stored values were UTC wall-clock times (the code
only ever wrote `datetime.now(timezone.utc)` and parsed times in UTC), so they are read `AT TIME ZONE
'UTC'`. SQLite has no time-zone type: `DateTime` and `DateTime(timezone=True)` are both `DATETIME`
holding the same UTC text, so there is nothing to alter; `storage.models.AwareDateTime` reads that
text back aware. (A batch rebuild of the 14 tables would change no byte, and with foreign keys on,
which storage.db turns on for every connection, SQLite refuses to drop a parent table that has rows.)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# table -> its timestamp columns (nullable or not, as the models say)
TIMESTAMPS: dict[str, tuple[tuple[str, bool], ...]] = {
    'owner': (('created_at', False),),
    'conversation': (('created_at', False),),
    'message': (('created_at', False),),
    'draft': (('created_at', False),),
    'feedback': (('created_at', False),),
    'version_prompt': (('created_at', False),),
    'writing_sample': (('written_at', True), ('created_at', False)),
    'adapter': (('created_at', False), ('activated_at', True)),
    'cycle': (('started_at', False), ('finished_at', True)),
    'lock': (('acquired_at', False), ('heartbeat_at', False)),
    'business_connection': (('created_at', False), ('updated_at', False)),
    'business_chat': (('last_contact_at', True), ('created_at', False)),
    'business_message': (('created_at', False),),
    'business_draft': (('created_at', False),),
}


def _alter(aware: bool) -> None:
    dialect = op.get_bind().dialect.name
    if dialect == 'sqlite':
        return  # DATETIME either way, UTC text either way (see above)
    old, new = sa.DateTime(timezone=not aware), sa.DateTime(timezone=aware)
    for table, columns in TIMESTAMPS.items():
        for name, nullable in columns:
            using = {}
            if dialect == 'postgresql':  # timestamp <-> timestamptz: the digits are UTC
                using = {'postgresql_using': f'"{name}" AT TIME ZONE \'UTC\''}
            op.alter_column(table, name, existing_type=old, type_=new, existing_nullable=nullable, **using)


def upgrade() -> None:
    _alter(aware=True)


def downgrade() -> None:
    _alter(aware=False)
