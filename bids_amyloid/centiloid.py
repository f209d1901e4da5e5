"""Published SUVR → Centiloid equations, one table, each with its source.

Centiloid (CL) is a linear rescaling of a cortical SUVR, but the slope and
intercept depend on the tracer, the processing pipeline (VOIs, registration)
and the reference region. An SUVR from one pipeline put through another
pipeline's equation gives wrong Centiloids, so conversion is opt-in
(``--suvr-equation KEY``) and every combination not in this table is refused.

Each equation maps ``CL = slope × SUVR + intercept``. The keys name the tracer,
the pipeline and the publication. ``columns`` lists the column names the SUVR
usually has (auto-detected when ``--centiloid-column`` is not given).

Sources (check the paper against your own pipeline before relying on a row):

- ``pib-klunk2015``: Klunk WE et al. The Centiloid Project. Alzheimers Dement
  2015;11:1–15, doi:10.1016/j.jalz.2014.07.003. Standard Centiloid method
  (SPM8, GAAIN cortical VOI, whole-cerebellum reference); CL = 100·(SUVR −
  1.009)/1.067 with the YC-0 and AD-100 anchor means 1.009 and 2.076.
- ``av45-navitsky2018``: Navitsky M et al. Alzheimers Dement 2018;14:1565–1571,
  doi:10.1016/j.jalz.2018.06.1353. Florbetapir with the standard Centiloid
  method (GAAIN VOIs, whole cerebellum): CL = 175.4·SUVR − 182.3.
- ``av45-avid-navitsky2018``: same paper, florbetapir SUVR from Avid's own
  pipeline (whole-cerebellum reference): CL = 183·SUVR − 177 (the same
  coefficients and citation as admiralneuro's ``compute_centiloid``, "AVID FBP
  SUVR PIPELINE"). Florbetapir equations with other coefficients circulate (e.g.
  CL = 196.9·SUVR − 196.03, which the simulator once attributed to Navitsky 2018
  by mistake); none is in this table without a source naming its pipeline.
- ``av45-adni-berkeley``: ADNI UC Berkeley florbetapir processing (Landau &
  Jagust; FreeSurfer cortical summary, whole-cerebellum reference), the SUVR
  in ADNIMERGE's ``AV45`` column that Clinica's adni-to-bids copies into
  ``sessions.tsv`` as ``adni_av45``: CL = 188.22·SUVR − 189.16 (ADNI "UC
  Berkeley amyloid PET methods"; equation derivation as in Royse SK et al.,
  Alzheimers Res Ther 2021;13:99, doi:10.1186/s13195-021-00836-1). Older
  Berkeley releases used other coefficients: check your export's version.
- ``fbb-rowe2017``: Rowe CC et al. Eur J Nucl Med Mol Imaging 2017;44:2053–2059,
  doi:10.1007/s00259-017-3749-6. Florbetaben, standard method, whole
  cerebellum: CL = 153.4·SUVR − 154.9.
- ``fbb-adni-berkeley``: ADNI UC Berkeley florbetaben processing (whole
  cerebellum): CL = 157.15·SUVR − 151.87 (same ADNI methods document).
- ``fmm-battle2018``: Battle MR et al. EJNMMI Res 2018;8:107,
  doi:10.1186/s13550-018-0456-7. Flutemetamol, standard method, whole
  cerebellum: CL = 121.42·SUVR − 121.16.
- ``nav4694-rowe2016``: Rowe CC et al. J Nucl Med 2016;57:1233–1237,
  doi:10.2967/jnumed.115.171595. NAV4694, standard method, whole cerebellum:
  CL = 85.2·SUVR − 87.6.

Example
-------
>>> eq = get_equation("av45-adni-berkeley")
>>> round(eq.to_centiloid(1.11), 2)
19.76
>>> sorted(parse_equations("pib-klunk2015,av45-navitsky2018"))
['AV45', 'PIB']
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SUVREquation:
    """One published linear SUVR → Centiloid conversion."""

    key: str
    tracer: str  # canonical code (bids_amyloid.tracers)
    pipeline: str
    reference: str
    slope: float
    intercept: float
    citation: str
    columns: tuple[str, ...] = ()  # usual names of the SUVR column

    def to_centiloid(self, suvr: float) -> float:
        """``slope × suvr + intercept``."""
        return self.slope * suvr + self.intercept


_KLUNK_YC0, _KLUNK_AD100 = 1.009, 2.076

EQUATIONS: dict[str, SUVREquation] = {
    eq.key: eq
    for eq in (
        SUVREquation(
            "pib-klunk2015", "PIB", "standard Centiloid (SPM8, GAAIN VOIs)", "whole cerebellum",
            100.0 / (_KLUNK_AD100 - _KLUNK_YC0), -100.0 * _KLUNK_YC0 / (_KLUNK_AD100 - _KLUNK_YC0),
            "Klunk et al. 2015, Alzheimers Dement 11:1-15, doi:10.1016/j.jalz.2014.07.003",
            ("pib_suvr", "suvr_pib")),
        SUVREquation(
            "av45-navitsky2018", "AV45", "standard Centiloid (GAAIN VOIs)", "whole cerebellum",
            175.4, -182.3,
            "Navitsky et al. 2018, Alzheimers Dement 14:1565-1571, doi:10.1016/j.jalz.2018.06.1353",
            ("av45_suvr", "suvr_av45")),
        SUVREquation(
            "av45-avid-navitsky2018", "AV45", "Avid florbetapir pipeline", "whole cerebellum",
            183.0, -177.0,
            "Navitsky et al. 2018, Alzheimers Dement 14:1565-1571, doi:10.1016/j.jalz.2018.06.1353",
            ("av45_suvr", "suvr_av45")),
        SUVREquation(
            "av45-adni-berkeley", "AV45", "ADNI UC Berkeley (FreeSurfer cortical summary)",
            "whole cerebellum", 188.22, -189.16,
            "ADNI UC Berkeley amyloid PET methods; Royse et al. 2021, Alzheimers Res Ther 13:99, "
            "doi:10.1186/s13195-021-00836-1",
            ("adni_av45", "AV45", "SUMMARY_SUVR_WHOLECEREBNORM")),
        SUVREquation(
            "fbb-rowe2017", "FBB", "standard Centiloid (GAAIN VOIs)", "whole cerebellum",
            153.4, -154.9,
            "Rowe et al. 2017, Eur J Nucl Med Mol Imaging 44:2053-2059, doi:10.1007/s00259-017-3749-6",
            ("fbb_suvr", "suvr_fbb")),
        SUVREquation(
            "fbb-adni-berkeley", "FBB", "ADNI UC Berkeley (FreeSurfer cortical summary)",
            "whole cerebellum", 157.15, -151.87,
            "ADNI UC Berkeley amyloid PET methods",
            ("adni_fbb", "FBB")),
        SUVREquation(
            "fmm-battle2018", "FMM", "standard Centiloid (GAAIN VOIs)", "whole cerebellum",
            121.42, -121.16,
            "Battle et al. 2018, EJNMMI Res 8:107, doi:10.1186/s13550-018-0456-7",
            ("fmm_suvr", "suvr_fmm")),
        SUVREquation(
            "nav4694-rowe2016", "NAV4694", "standard Centiloid (GAAIN VOIs)", "whole cerebellum",
            85.2, -87.6,
            "Rowe et al. 2016, J Nucl Med 57:1233-1237, doi:10.2967/jnumed.115.171595",
            ("nav4694_suvr", "suvr_nav4694")),
    )
}


def describe_equations() -> str:
    """One line per equation: key, tracer, pipeline, reference, formula."""
    return "\n".join(
        f"{eq.key}: {eq.tracer}, {eq.pipeline}, {eq.reference} reference, "
        f"CL = {eq.slope:.4g} x SUVR {eq.intercept:+.4g} ({eq.citation})"
        for eq in EQUATIONS.values()
    )


def get_equation(key: str) -> SUVREquation:
    """The equation named ``key``; ValueError naming the known keys otherwise."""
    try:
        return EQUATIONS[key.strip()]
    except KeyError:
        raise ValueError(f"unknown SUVR equation {key!r}; known: {', '.join(EQUATIONS)}") from None


def parse_equations(text: str) -> dict[str, SUVREquation]:
    """``"key1,key2"`` → ``{tracer: equation}``; at most one equation per tracer."""
    chosen: dict[str, SUVREquation] = {}
    for key in filter(None, (k.strip() for k in text.split(","))):
        eq = get_equation(key)
        if eq.tracer in chosen and chosen[eq.tracer].key != eq.key:
            raise ValueError(f"SUVR equations {chosen[eq.tracer].key!r} and {eq.key!r} are both "
                             f"for {eq.tracer}: choose one")
        chosen[eq.tracer] = eq
    if not chosen:
        raise ValueError("no SUVR equation given")
    return chosen
