"""kb: shared core (settings, domain models, ports and adapters)."""
