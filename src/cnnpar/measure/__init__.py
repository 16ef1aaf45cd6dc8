"""Measurement: timing (warm-up, repeats, interleaved rounds, paired ratios), thread control,
the environment record and the roofs (sgemm and triad bandwidth probes). Every number cnnpar
reports passes through here."""
