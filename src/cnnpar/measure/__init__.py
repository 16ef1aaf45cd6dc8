"""Measurement: timing (warm-up, repeats, interleaved rounds, paired ratios), thread control,
the environment record and the sgemm roofline. Every number cnnpar reports passes through here."""
