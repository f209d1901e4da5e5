"""bids-amyloid: amyloid-beta PET positivity from routine MRI, as a BIDS App."""

__version__ = "0.1.0"
