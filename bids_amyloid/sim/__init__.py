"""Building blocks of the synthetic cohort (see :mod:`bids_amyloid.simulate`)."""
