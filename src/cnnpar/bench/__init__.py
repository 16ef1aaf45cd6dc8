"""`cnnpar bench train|classify`: small built-in studies run through the study's plan, run
functions, records and tables (`bench.common`), each with its targets and their verdicts."""
