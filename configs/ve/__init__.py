"""Released score_sde configs (ve)."""
