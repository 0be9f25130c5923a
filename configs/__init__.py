"""Experiment configs (``ml_collections``): ``configs.<name>.get_config(preset)``.

Each module documents its fields; ``python -m experiments <name> --preset P
--config.<field>=<value>`` selects a preset and overrides fields.
"""
