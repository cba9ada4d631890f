"""Learning from the tower's own history (docs/learning.md).

* observed quality per model × task type: ``signals`` (the evidence each answer leaves),
  ``quality`` (the estimates, the proposals to the admin, active mode's world); the pure
  estimator and exploration are ``policy.learning``.
* preload windows predicted from demand: ``windows`` (the forecast, pure but for time zones, is ``forecast``).
"""
