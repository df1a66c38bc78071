"""The log's tables: tlog_state, tlog_entries, tlog_tiles, tlog_checkpoints.

Adopts a database whose tables ``create_all`` made before the migrations existed: only what is
missing is created.

Revision ID: tlog_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "tlog_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "tlog_state" not in tables:
        op.create_table(
            "tlog_state",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("origin", sa.Text, nullable=False),
            sa.Column("vkey", sa.Text, nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("compact_range", sa.LargeBinary, nullable=False),
            sa.Column("root_hash", sa.LargeBinary, nullable=False),
            sa.Column("published_size", sa.BigInteger, nullable=False),
        )
    if "tlog_entries" not in tables:
        op.create_table(
            "tlog_entries",
            sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
            sa.Column("data", sa.LargeBinary, nullable=False),
        )
    indexes = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("tlog_entries")}
    if "ix_tlog_entries_leaf_hash" not in indexes:
        op.create_index("ix_tlog_entries_leaf_hash", "tlog_entries", ["leaf_hash"])
    if "tlog_tiles" not in tables:
        op.create_table(
            "tlog_tiles",
            sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
            sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("hashes", sa.LargeBinary, nullable=False),
        )
    if "tlog_checkpoints" not in tables:
        op.create_table(
            "tlog_checkpoints",
            sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("note", sa.LargeBinary, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("tlog_checkpoints")
    op.drop_table("tlog_tiles")
    op.drop_index("ix_tlog_entries_leaf_hash", table_name="tlog_entries")
    op.drop_table("tlog_entries")
    op.drop_table("tlog_state")
