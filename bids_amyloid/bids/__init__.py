"""Reading real-world BIDS: MRI sessions, amyloid PET scans, dates and Centiloid.

What is read, and from where:

- **Images** with pybids (a layout built with ``validate=False``; its database
  lives in the work dir or in memory, never in BIDS_DIR): T1w, T2w, FLAIR,
  T2starw under ``anat/``, ``*_pet.nii[.gz]`` under ``pet/``. Each query can be
  narrowed by ``--bids-filter-file`` (keys ``t1w``, ``t2w``, ``flair``,
  ``t2starw``, ``pet``; values are pybids entity filters, ``null`` = entity
  absent, ``"*"`` = any value). Several runs of one contrast in a session: the
  lowest ``run`` (then the file name) is used, and the choice is logged.
- **Tracer** from the ``trc-`` entity, else the sidecar's ``TracerName``, else
  an ``acq-`` label naming a tracer (OASIS-3's raw naming); aliases are
  normalised (:func:`bids_amyloid.tracers.normalise_tracer`). PET that is not
  an amyloid tracer (FDG, tau) is skipped with a reason.
- **Dates**, first found wins: ``scans.tsv`` ``acq_time`` of the file;
  ``sessions.tsv`` ``acq_time``; ``sessions.tsv`` ``examination_date``
  (Clinica's ADNI converter); a day offset from a session label ``ses-d0129``
  or a ``source_session_id`` like ``d0129`` (OASIS-3; such days are only
  comparable within one subject). The source is kept with each date.
- **Centiloid** from the PET file's ``scans.tsv`` row, the PET session's
  ``sessions.tsv`` row, or ``participants.tsv`` (one value per subject: used
  only for a subject with a single amyloid PET). The column is
  ``--centiloid-column`` or the first of :data:`CENTILOID_COLUMNS` present
  (case-insensitive). With ``--suvr-equation`` an SUVR column is converted
  instead, with an equation from :mod:`bids_amyloid.centiloid`.

Problems with one scan never stop the run: they are recorded as
``"<code>: <detail>"`` notes that the cohort turns into exclusion reasons.

Modules: :mod:`.records` (what is returned), :mod:`.tables` (TSV cells and
dates), :mod:`.centiloid_columns`, :mod:`.validation` (bids-validator),
:mod:`.layout` (pybids queries), :mod:`.inventory` (:func:`collect_inventory`),
:mod:`.pairing` (PET ↔ MRI session, the one pairing of every level, and what
``--session-label`` selects). The names other modules use are
re-exported here: ``from bids_amyloid.bids import collect_inventory``.
"""

from bids_amyloid.bids.centiloid_columns import CENTILOID_COLUMNS, CentiloidSource, read_centiloid
from bids_amyloid.bids.inventory import collect_inventory, pet_tracer
from bids_amyloid.bids.layout import build_layout, check_filters, name_entities, sidecar_metadata
from bids_amyloid.bids.pairing import (
    PET_CONTRAST,
    days_apart,
    pair_one,
    pair_pet_with_mri,
    pair_scans,
    pairing_contrasts,
    select_sessions,
)
from bids_amyloid.bids.records import Inventory, MRISession, PETScan, SkippedScan
from bids_amyloid.bids.tables import (
    DAY_OFFSET_EPOCH,
    DAY_OFFSET_SOURCE,
    date_kind,
    day_offset,
    parse_date,
    read_tsv,
)
from bids_amyloid.bids.validation import validate_bids, validator_executable

__all__ = [
    "CENTILOID_COLUMNS", "DAY_OFFSET_EPOCH", "DAY_OFFSET_SOURCE", "PET_CONTRAST",
    "CentiloidSource", "Inventory", "MRISession", "PETScan", "SkippedScan", "build_layout",
    "check_filters", "collect_inventory", "date_kind", "day_offset", "days_apart",
    "name_entities", "pair_one", "pair_pet_with_mri", "pair_scans", "pairing_contrasts",
    "parse_date", "pet_tracer", "read_centiloid", "read_tsv", "select_sessions",
    "sidecar_metadata", "validate_bids", "validator_executable",
]
