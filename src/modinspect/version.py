"""The package version: a leaf every layer may import (render writes it into JSON documents)."""

__version__ = "0.1.0"
