"""The cost model's public names, gathered from the modules that define them.

- :mod:`maskc.work`: what a candidate is and the work it takes (:class:`Candidate`, :class:`Work`);
- :mod:`maskc.profile`: a GPU's measured constants and the workload they are looked up for;
- :mod:`maskc.model`: the prediction of a candidate's time and the ranking of candidates;
- :mod:`maskc.predictions`: the record of the predictions a plan carries, written and read back.

The fitting of a profile's constants to measurements is ``maskc.measure.fit``'s.
"""

from __future__ import annotations

from maskc.model import OBJECTIVES, Prediction, Ranking, predict, rank
from maskc.predictions import Recorded, record, recorded, reevaluate
from maskc.profile import (
    DEFAULT_PROFILE, DTYPES, ENV_PROFILE, HEAD_DIM_BUCKETS, KERNELS, LAUNCHES, NO_PROFILE, PASSES, PROFILE_DIR, SCHEMA, KernelCosts,
    LinearCost, ListCosts, PiecesCost, Profile, ProfileError, ReorderCost, Workload, default_profile, head_dim_bucket, load_profile,
    parse_kernel_entry, parse_profile, profile_filename, resolve_profile,
)
from maskc.work import Candidate, ListWork, Work, pareto_front, pieces_work, plan_candidate, work_of

__all__ = [
    "DEFAULT_PROFILE", "DTYPES", "ENV_PROFILE", "HEAD_DIM_BUCKETS", "KERNELS", "LAUNCHES", "NO_PROFILE", "OBJECTIVES", "PASSES", "PROFILE_DIR",
    "SCHEMA", "Candidate", "KernelCosts", "LinearCost", "ListCosts", "ListWork", "PiecesCost", "Prediction", "Profile", "ProfileError",
    "Ranking", "Recorded", "ReorderCost", "Work", "Workload", "default_profile", "head_dim_bucket", "load_profile", "pareto_front",
    "parse_kernel_entry", "parse_profile", "pieces_work", "plan_candidate", "predict", "profile_filename", "rank", "record", "recorded",
    "reevaluate", "resolve_profile", "work_of",
]
