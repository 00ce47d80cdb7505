"""Score networks of the score_sde family, behind a registry (see `models.utils`)."""
