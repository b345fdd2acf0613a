"""Data: the store, the conventions every source follows, the split, and the sources."""
