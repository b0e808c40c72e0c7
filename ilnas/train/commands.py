"""``ilnas retrain`` and ``ilnas transfer`` (registered on ilnas.cli.app)."""
