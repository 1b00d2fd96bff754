"""One module per algorithm; each registers itself with :mod:`superhf_lab.registry` on import."""
