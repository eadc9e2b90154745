"""EllipseESoft shape parameters (logre, ee1, ee2) and their pixel covariance.

``re`` is the semi-major effective radius in pixels, ``ab`` the axis ratio b/a and ``phi_deg`` the
Tractor angle (degrees); the catalog THETA <-> phi conversion is the fitting stage's job.  The unit
covariance ``S`` returned here is ``T T^T`` with ``T = re R(theta) diag(q, 1)``; mixture component k
then has covariance ``v_k S``.
"""
from __future__ import annotations

import math

import numpy as np

LOGRE_BOUNDS = (math.log(0.1), math.log(1000.0))
EE_BOUNDS = (-100.0, 100.0)
#: no galaxy image is thinner than b/a ~ 0.1 (an edge-on disc); below it the fit meets a soft wall
#: in the softened ellipticity |ee| (:func:`ellipticity_wall`).  Without it a compact galaxy whose
#: minor axis the PSF hides collapses into a line (b/a ~ 1e-5) along a neighbouring star's PSF
#: residual: a shape no galaxy has (its flux error is the residual's, with or without the wall).
AB_MIN = 0.1
#: width of the wall in |ee| (b/a 0.1 -> 0.08 costs ~17 in chi^2)
EE_WALL_SIGMA = 0.05


def catalog_shape_to_params(re: float, ab: float, phi_deg: float) -> tuple[float, float, float]:
    """(re px, b/a, Tractor phi deg) -> (logre, ee1, ee2), exactly as EllipseESoft.fromRAbPhi."""
    ab = float(np.clip(ab, 1e-6, 1.0))
    e = (1.0 - ab) / (1.0 + ab)
    ee = -math.log(1.0 - e)
    ang = -2.0 * math.radians(phi_deg)
    return math.log(re), ee * math.cos(ang), ee * math.sin(ang)


def params_to_catalog_shape(logre: float, ee1: float, ee2: float) -> tuple[float, float, float]:
    """(logre, ee1, ee2) -> (re px, b/a, phi_deg in [0, 180))."""
    ee = math.hypot(ee1, ee2)
    e = 1.0 - math.exp(-ee)
    ab = (1.0 - e) / (1.0 + e)
    theta = 0.5 * math.atan2(ee2, ee1)
    return math.exp(logre), ab, (-math.degrees(theta)) % 180.0


#: |ee| at b/a = AB_MIN (ee1 of an unrotated shape is |ee|)
EE_MAX = catalog_shape_to_params(1.0, AB_MIN, 0.0)[1]


def ellipticity_wall(ee1: float, ee2: float) -> tuple[float, np.ndarray, np.ndarray]:
    """(ln p, its gradient d/d(ee1, ee2), its Gauss-Newton curvature (2, 2)) of the soft wall at
    b/a = AB_MIN: ln p = -((|ee| - EE_MAX) / EE_WALL_SIGMA)^2 / 2 beyond it, 0 (and no
    curvature) inside, so it changes nothing for galaxies rounder than AB_MIN."""
    ee = math.hypot(ee1, ee2)
    if not ee > EE_MAX:
        return 0.0, np.zeros(2), np.zeros((2, 2))
    r = (ee - EE_MAX) / EE_WALL_SIGMA
    n = np.array([ee1, ee2]) / ee
    return -0.5 * r * r, -(r / EE_WALL_SIGMA) * n, np.outer(n, n) / EE_WALL_SIGMA ** 2


def unit_covariance(logre: float, ee1: float, ee2: float) -> np.ndarray:
    """Pixel covariance ``T T^T`` (2x2, [[Sxx, Sxy], [Sxy, Syy]]) of the unit-variance shape.

    Written in a form that stays smooth through |ee| = 0 (the angle is undefined there).
    """
    re2 = math.exp(2.0 * logre)
    ee = math.hypot(ee1, ee2)
    e = -math.expm1(-ee)
    q = (1.0 - e) / (1.0 + e)
    # (1 - q^2) / (2 |ee|), with its |ee| -> 0 limit (= 2)
    s = 2.0 if ee < 1e-12 else (1.0 - q * q) / (2.0 * ee)
    m = 0.5 * (1.0 + q * q)
    return re2 * np.array([[m - s * ee1, s * ee2], [s * ee2, m + s * ee1]])


def unit_covariance_derivs(logre: float, ee1: float, ee2: float, h: float = 1e-6) -> np.ndarray:
    """d S / d(logre, ee1, ee2) as a (3, 2, 2) array (logre analytic, ee by central differences)."""
    out = np.empty((3, 2, 2))
    out[0] = 2.0 * unit_covariance(logre, ee1, ee2)
    out[1] = (unit_covariance(logre, ee1 + h, ee2) - unit_covariance(logre, ee1 - h, ee2)) / (2 * h)
    out[2] = (unit_covariance(logre, ee1, ee2 + h) - unit_covariance(logre, ee1, ee2 - h)) / (2 * h)
    return out


def shape_prior_precision(re: float, ab: float, phi_deg: float, re_sigma: float | None,
                          ell_sigma: float | None, theta_sigma_deg: float | None):
    """Gaussian prior on (logre, ee1, ee2) from catalog errors, as (mean (3,), precision (3,3)).

    sigma_logre = re_sigma / re.  (ee1, ee2) covariance = J diag(ell_sigma^2, theta_sigma^2) J^T with
    J the Jacobian of (ee1, ee2) with respect to (ELL, THETA) at the catalog values; the tangential
    variance is floored at the radial one so that near-round sources are not pinned in angle.
    Returns None when no prior applies.
    """
    mean = np.array(catalog_shape_to_params(re, ab, phi_deg))
    prec = np.zeros((3, 3))
    used = False
    if re_sigma is not None and np.isfinite(re_sigma) and re_sigma > 0 and re > 0:
        prec[0, 0] = (re / re_sigma) ** 2
        used = True
    if (ell_sigma is not None and theta_sigma_deg is not None and np.isfinite(ell_sigma)
            and np.isfinite(theta_sigma_deg) and ell_sigma > 0 and theta_sigma_deg > 0):
        ab = float(np.clip(ab, 1e-6, 1.0))
        # ee = -ln(1 - e), e = (1 - ab)/(1 + ab), ab = 1 - ELL  ->  d|ee|/dELL = (1/(1-e)) * de/dab * (-1)
        e = (1.0 - ab) / (1.0 + ab)
        dee_dell = (1.0 / (1.0 - e)) * (2.0 / (1.0 + ab) ** 2)
        eemag = math.hypot(mean[1], mean[2])
        ang = -2.0 * math.radians(phi_deg)
        radial = np.array([math.cos(ang), math.sin(ang)])
        tangential = np.array([-math.sin(ang), math.cos(ang)])
        sig_r = dee_dell * ell_sigma
        sig_t = max(2.0 * eemag * math.radians(theta_sigma_deg), sig_r)
        cov = sig_r ** 2 * np.outer(radial, radial) + sig_t ** 2 * np.outer(tangential, tangential)
        prec[1:, 1:] = np.linalg.inv(cov)
        used = True
    return (mean, prec) if used else None
