"""The read path and every front door (HTTP API, CLI, web page, Slack)."""
