"""Node wiring: configuration, the block-producing driver, the API server."""
