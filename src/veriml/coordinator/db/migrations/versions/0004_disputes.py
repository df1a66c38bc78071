"""Open disputes live in the database, so a coordinator restart resumes them.

``disputes``: one row per open dispute (its parties, claim, receipt, model, mode, stored-input
digests, the log index of its ``challenge`` entry, the reveals recorded so far and the move
asked now), claimed by one replica at a time through ``owner``/``lease_until`` and deleted once
the verdict is logged (docs/verification.md, "Persistence").

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "disputes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("inference", sa.String(256), nullable=False),
        sa.Column("defendant", sa.String(71), nullable=False),
        sa.Column("challenger", sa.String(256), nullable=False),
        sa.Column("claim", sa.String(71), nullable=False),
        sa.Column("receipt", sa.JSON, nullable=False),
        sa.Column("model", sa.String(71), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("policy", sa.String(256), nullable=False),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("parties", sa.JSON, nullable=False),
        sa.Column("opened", sa.BigInteger),
        sa.Column("reveals", sa.JSON, nullable=False),
        sa.Column("move", sa.JSON),
        sa.Column("rounds", sa.Integer, nullable=False, server_default="0"),
        sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
        sa.UniqueConstraint("claim", name="uq_disputes_claim"),
    )
    op.create_index("ix_disputes_defendant", "disputes", ["defendant"])


def downgrade() -> None:
    op.drop_index("ix_disputes_defendant", table_name="disputes")
    op.drop_table("disputes")
