"""Namespaces, unsigned models and the randomness beacon.

``models``: the publisher and signature become nullable (a hub that allows unsigned publishing
registers models without them). ``namespaces``: which publisher key owns each model namespace,
and the log index of its ``namespace`` entry. ``beacon_keys``: the secret key of every
randomness epoch the coordinator committed to in the log.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.alter_column("publisher_key_id", existing_type=sa.String(71), nullable=True)
        batch.alter_column("publisher_key", existing_type=sa.Text, nullable=True)
        batch.alter_column("signature", existing_type=sa.String(71), nullable=True)
    op.create_table(
        "namespaces",
        sa.Column("namespace", sa.String(256), primary_key=True),
        sa.Column("owner", sa.String(71), nullable=False),
        sa.Column("owner_key", sa.Text, nullable=False),
        sa.Column("model", sa.String(71), nullable=False),
        sa.Column("log_index", sa.BigInteger),
    )
    op.create_table(
        "beacon_keys",
        sa.Column("epoch", sa.BigInteger, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("log_index", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("beacon_keys")
    op.drop_table("namespaces")
    op.execute("DELETE FROM models WHERE publisher_key IS NULL")
    with op.batch_alter_table("models") as batch:
        batch.alter_column("signature", existing_type=sa.String(71), nullable=False)
        batch.alter_column("publisher_key", existing_type=sa.Text, nullable=False)
        batch.alter_column("publisher_key_id", existing_type=sa.String(71), nullable=False)
