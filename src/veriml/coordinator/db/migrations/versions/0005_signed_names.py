"""Only signed models reserve their ``name@version``.

An unsigned model owns no name (docs/models.md, "Names"), so it must not keep the publisher who
owns the namespace from registering that ``name@version``: the unique constraint on ``models``
(name, version) becomes a unique index over the rows that have a publisher.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SIGNED = sa.text("publisher_key_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("uq_models_name_version", type_="unique")
    op.create_index(
        "uq_models_signed_name_version",
        "models",
        ["name", "version"],
        unique=True,
        sqlite_where=_SIGNED,
        postgresql_where=_SIGNED,
    )


def downgrade() -> None:
    op.drop_index("uq_models_signed_name_version", table_name="models")
    op.execute("DELETE FROM models WHERE publisher_key_id IS NULL")
    with op.batch_alter_table("models") as batch:
        batch.create_unique_constraint("uq_models_name_version", ["name", "version"])
