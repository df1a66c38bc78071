"""The coordinator's database: tables, migrations and the repositories, the only code that
speaks SQL (docs/coordinator.md, "Database")."""
