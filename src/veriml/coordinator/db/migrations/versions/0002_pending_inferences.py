"""Pending inferences: an ``inferences`` row is written before its log entry is appended.

``log_index`` becomes nullable (NULL = pending); ``entry`` holds the entry bytes until the row
is completed, ``leaf_hash`` (hex) finds the entry in the log after a crash, and ``claimed_at``
lets exactly one replica finish a row a crashed one left pending.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inferences") as batch:
        batch.alter_column("log_index", existing_type=sa.BigInteger, nullable=True)
        batch.add_column(sa.Column("entry", sa.Text))
        batch.add_column(sa.Column("leaf_hash", sa.String(64)))
        batch.add_column(sa.Column("claimed_at", sa.Float))


def downgrade() -> None:
    op.execute("DELETE FROM inferences WHERE log_index IS NULL")
    with op.batch_alter_table("inferences") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("leaf_hash")
        batch.drop_column("entry")
        batch.alter_column("log_index", existing_type=sa.BigInteger, nullable=False)
