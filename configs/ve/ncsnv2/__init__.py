"""Released score_sde configs (ve/ncsnv2)."""
