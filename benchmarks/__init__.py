"""`make bench`: each benchmark measures the project's path against a raw baseline, side by
side in the same process, and prints the ratio (wall times alone say little on a shared box)."""
