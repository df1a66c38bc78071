"""The witness's table: witness_latest_checkpoint.

Adopts a database whose table ``create_all`` made before the migrations existed: it is created
only if missing.

Revision ID: witness_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "witness_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "witness_latest_checkpoint" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "witness_latest_checkpoint",
        sa.Column("origin", sa.String(1024), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("witness_latest_checkpoint")
