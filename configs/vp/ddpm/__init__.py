"""Released score_sde configs (vp/ddpm)."""
