"""nft text (stub)."""
