"""The windowed reconciler: compare source and target per closed window, repair, advance watermarks."""
