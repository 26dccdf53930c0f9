"""Prioritized clinical goals, site protocol templates, goals from a predicted dose.

``goal`` (ClinicalGoal, GoalKind, GOALS files), ``evaluate`` (achieved / met on the DVH
convention of :mod:`core.evaluation.dvh`), ``templates`` (``resources/protocols`` and the
user's protocol folder), ``from_prediction`` (personalised goal values).
"""

from core.goals.goal import ClinicalGoal, GoalKind, goals_to_json, load_goals, save_goals

__all__ = ["ClinicalGoal", "GoalKind", "goals_to_json", "load_goals", "save_goals"]
