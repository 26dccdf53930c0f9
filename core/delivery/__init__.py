"""Delivery: leaf sequencing (fluence -> step-and-shoot MLC segments), MLC models, MU.

Modules: :mod:`~core.delivery.mlc` (MLC/jaw models), :mod:`~core.delivery.segments`
(Segment, SegmentedBeam, segments -> deliverable beamlet weights), :mod:`~core.delivery.sequencing`
(Xia-Verhey and sweep sequencers), :mod:`~core.delivery.mu` (MU summary),
:mod:`~core.delivery.effect` (what sequencing changed in the dose).
"""
