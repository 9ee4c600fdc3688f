"""Ray Tune sweeps: the search space, the trial, and the selection of what to ship."""
