"""Studies: what a recipe costs (the benchmark, scaling), how it generalizes (the train x test matrix),
and whether its numbers can be trusted (the leakage and shortcut audit)."""
