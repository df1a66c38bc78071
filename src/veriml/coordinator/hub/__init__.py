"""The model hub: publishing, resolving and serving signed models (docs/models.md)."""
