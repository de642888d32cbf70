"""Data: where images come from, how they are split, decoded and cached."""
