"""Pure functions from a Source's metadata (and, where needed, its tensors) to report dataclasses."""
