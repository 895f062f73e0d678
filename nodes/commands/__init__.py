"""Sub-commands of `mesh`, one module per area, each with a ``register(app)``."""
