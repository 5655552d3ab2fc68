"""Command-line tools. Each sub-command lives in its own module exposing ``register(subparsers)``."""
