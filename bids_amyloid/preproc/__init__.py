"""Participant level: MRI and PET preprocessing into the template space.

Image operations (small pure functions, image in → image out):

- :mod:`.template`   the MNI152NLin2009aSym template, GAAIN VOIs, grids, nibabel ↔ ANTs
- :mod:`.bias`       N4 bias-field correction
- :mod:`.skullstrip` HD-BET (default) or deepbet brain extraction
- :mod:`.intensity`  percentile clipping, min–max, gamma
- :mod:`.register`   rigid registration, transform files and composition
- :mod:`.pet`        frame averaging, smoothing, PET → MRI → template, SUVR
- :mod:`.slices`     sagittal slice positions and 224×224 slice extraction
- :mod:`.mri`        :func:`preprocess_mri_session`, the per-session MRI chain

Orchestration is :mod:`bids_amyloid.participant`; QC and input checks live in ``report``/``checks``.
Nothing heavy (torch, ants) is imported here.
"""
