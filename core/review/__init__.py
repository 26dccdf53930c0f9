"""Blinded side-by-side physician review of automated vs manual plans.

* :mod:`core.review.study` -- create a study (plans copied blinded, key kept apart),
  the reviewer-facing :class:`~core.review.study.ReviewStudy` (cases in each reviewer's
  order, answers saved per click, resume), unblinding; the threat model is stated there;
* :mod:`core.review.questionnaire` -- versioned questionnaire schema, the published one
  built in, and the "cannot judge" scoring rules;
* :mod:`core.review.store` -- SQLite (WAL, one transaction per answer), lock and damage
  errors;
* :mod:`core.review.aggregate` -- scoring and aggregates (acceptance, preference,
  identification, Fleiss' kappa, keywords);
* :mod:`core.review.report` -- JSON/CSV export and the HTML page with stacked bars.
"""
