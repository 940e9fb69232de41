"""nft json (stub)."""
