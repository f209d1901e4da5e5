"""Group level: three-phase teacher/student training, evaluation and reports.

Modules: :mod:`.data` (memory-mapped slice caches, weighted sampler),
:mod:`.augment`, :mod:`.losses`, :mod:`.mining`, :mod:`.schedules`,
:mod:`.loop` (the one training loop), :mod:`.phases` (pretrain, contrastive,
distill), :mod:`.metrics`, :mod:`.report` and :mod:`.run` (``run_group``).
Heavy imports happen in the submodules, not here.
"""
