"""Group level: three-phase teacher/student training, evaluation and reports.

Modules: :mod:`.data` (memory-mapped slice caches, weighted sampler),
:mod:`.augment`, :mod:`.losses`, :mod:`.mining`, :mod:`.schedules`,
:mod:`.loop` (the one training loop), :mod:`.checkpoints`, :mod:`.phases`
(pretrain, contrastive, distill tasks), :mod:`.nets` (their networks with losses),
:mod:`.batches` (batch preparation, validation passes), :mod:`.metrics`, :mod:`.report` and :mod:`.run` (``run_group``).
Heavy imports happen in the submodules, not here.
"""
