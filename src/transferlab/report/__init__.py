"""Reports on a run: figures and summaries written next to its results."""
