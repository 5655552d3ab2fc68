"""Command-line tools: one module per sub-command, each exposing ``register(subparsers)``."""
