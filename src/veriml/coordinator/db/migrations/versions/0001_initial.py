"""The coordinator schema: models, nodes, descriptor_nonces, inferences.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("digest", sa.String(71), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("task", sa.String(256)),
        sa.Column("license", sa.String(256)),
        sa.Column("publisher_key_id", sa.String(71), nullable=False),
        sa.Column("publisher_key", sa.Text, nullable=False),
        sa.Column("files_digest", sa.String(71), nullable=False),
        sa.Column("signature", sa.String(71), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("io", sa.JSON, nullable=False),
        sa.Column("card", sa.JSON),
        sa.Column("parents", sa.JSON, nullable=False),
        sa.Column("datasets", sa.JSON, nullable=False),
        sa.Column("log_index", sa.BigInteger),
        sa.Column("registered_at", sa.String(32), nullable=False),
        sa.Column("submitted_by", sa.String(71)),
        sa.Column("claimed_at", sa.Float),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    op.create_index("ix_models_task", "models", ["task"])
    op.create_index("ix_models_publisher", "models", ["publisher_key_id"])
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(71), primary_key=True),
        sa.Column("operator", sa.String(128), nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("descriptor", sa.JSON, nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("log_index", sa.BigInteger, nullable=False),
        sa.Column("registered_at", sa.String(32), nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("failed_at", sa.Float),
        sa.Column("active", sa.Integer, nullable=False, server_default="0"),
        sa.Column("queued", sa.Integer, nullable=False, server_default="0"),
        sa.Column("capacity", sa.Integer, nullable=False, server_default="1"),
        sa.Column("cached", sa.JSON, nullable=False),
    )
    op.create_table(
        "descriptor_nonces",
        sa.Column("nonce", sa.String(128), primary_key=True),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.create_table(
        "inferences",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("model", sa.String(71), nullable=False),
        sa.Column("policy", sa.String(256), nullable=False),
        sa.Column("request_digest", sa.String(71), nullable=False),
        sa.Column("log_index", sa.BigInteger, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inferences")
    op.drop_table("descriptor_nonces")
    op.drop_table("nodes")
    op.drop_index("ix_models_publisher", "models")
    op.drop_index("ix_models_task", "models")
    op.drop_table("models")
