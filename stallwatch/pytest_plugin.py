"""pytest plugin entry point (inactive unless asked; placeholder until it lands)."""

from __future__ import annotations
