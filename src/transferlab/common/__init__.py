"""Helpers every stage shares: atomic file writes, progress bars, where caches live, run files."""
