"""Fluence optimization against prioritized clinical goals.

``objectives`` (differentiable goal penalties), ``conformity`` (dose fall-off around
targets, helper rings), ``fluence`` (the lexicographic optimizer: ``optimize_plan``,
``optimize_fluence``, ``OptimizationResult``). Torch is imported only inside functions.
"""
