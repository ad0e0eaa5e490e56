"""Data sets, their checked downloads, and episodes."""
