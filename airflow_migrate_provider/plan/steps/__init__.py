"""The plan model of each step kind, one module per kind (their behaviour lives in core/kinds/)."""
