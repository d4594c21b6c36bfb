"""Sub-commands of the ``fidediff`` command line; each module exposes ``register(subparsers)``."""
