"""The write path: partition -> chunk -> embed -> index, driven by durable jobs in the registry."""
