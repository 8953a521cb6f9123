"""Training configs: one file per experiment of the papers, each `get_config(arg)`."""
