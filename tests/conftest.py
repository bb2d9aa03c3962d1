"""Shared test set-up: hypothesis profiles.

HYPOTHESIS_PROFILE=ci (the default, used by .ci/run) is fixed and derandomised so a run
is reproducible; HYPOTHESIS_PROFILE=thorough runs many more examples for local checks.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
