"""Training tasks: one module per kind of training (see :mod:`..task` for the protocol)."""
