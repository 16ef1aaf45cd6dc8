"""Side-by-side throughput benches: `bench.train` (TinyCNN engines in one process) and
`bench.classify` (MosaicNet classify modes, each a fresh process); `bench.common` holds the row
type and the CSV/run-record writer both use."""
