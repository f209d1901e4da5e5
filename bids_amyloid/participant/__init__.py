"""Participant level: preprocessed MRI and PET, slice caches and QC pages in OUT.

Modules, in the order a run uses them:

- :mod:`.run`      entry points, pairing, skipping finished jobs, worker processes, summary
- :mod:`.plan`     jobs (an MRI session and its PET scans), units, results, the image steps
- :mod:`.outputs`  what each unit writes and the restart rule (parameter hash, sources)
- :mod:`.worker`   one job: check, preprocess, stage and commit each unit
- :mod:`.staging`  writing a unit's images, sidecars, slice caches and QC data
- :mod:`.commit`   moving a staged unit into OUT, sidecars last

The image operations themselves are in :mod:`bids_amyloid.preproc`; every
output name comes from :mod:`bids_amyloid.derivatives`.
"""
