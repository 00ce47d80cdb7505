"""Released score_sde configs (subvp)."""
