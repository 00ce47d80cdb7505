"""Small CPU configs for tests and demos: valid score_sde configs at 16-32 px."""
