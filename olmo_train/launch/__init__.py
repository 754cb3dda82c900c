"""Launchers: the Slurm batch script's Python helpers (`slurm_job`), cluster profiles, and the submitit launcher."""
