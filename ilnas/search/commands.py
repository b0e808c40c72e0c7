"""``ilnas search`` (registered on ilnas.cli.app)."""
