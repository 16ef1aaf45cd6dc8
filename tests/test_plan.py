"""The study's plan: the runs of a family, their order inside its one job, and their commands.
Everything here is decided from the config, so it is tested without running anything."""

from __future__ import annotations

import pytest

from cnnpar import params, registry
from cnnpar.study import plan

# The run parameters at their config defaults (filters [8], batch_sizes [32], seeds [0], epochs
# 2, ...; classify repeats 3), as validation fills them in, so a new parameter needs no edit here.
TINYCNN = {
    **{p.key: p.study_default for p in params.TRAIN},
    "engines": ["numpy", "numba", "torch", "torch-ddp"],
    "threads": [1, 2, 4],
    "ranks": [2],
    "time_budget": 1.0,
}
CLASSIFY = {
    **{p.key: p.study_default for p in params.CLASSIFY},
    "workers": [2, 4],
    "ranks": [2],
}
CONFIG = {
    "data": {"source": "bundled", "dir": None, "mirror": None},
    "timing": {"lock": None, "max_others_share": 0.1, "max_probe_change": 0.15},
    "machine_label": None,
    "train": {"tinycnn": TINYCNN},
    "classify": CLASSIFY,
}


def labels(runs: list[plan.Run]) -> list[str]:
    return [run.label() for run in runs]


def test_a_training_family_runs_engine_by_engine_in_the_config_order_reversed_in_even_blocks():
    configs = plan.tinycnn_configs(TINYCNN["engines"], TINYCNN)
    odd = plan.family_runs("train", configs, block=1)
    assert labels(odd) == [
        "numpy 1 thread",
        "numba 1,2,4 threads",  # one process, the counts taking turns in short windows
        "torch 1,2,4 threads",
        "torch-ddp 2 ranks x 1 thread",
        "torch-ddp 2 ranks x 2 threads",
    ]
    assert [r.interleaved for r in odd] == [False, True, True, False, False]
    even = plan.family_runs("train", configs, block=2)
    assert labels(even) == labels(odd)[::-1]
    # Every configuration is recorded by exactly one run.
    recorded = [c for run in odd for c in run.configs]
    assert sorted(map(str, recorded)) == sorted(map(str, configs))


def test_a_classification_family_runs_mode_by_mode_parallelism_ascending():
    configs = plan.classify_configs(["sequential", "threads", "processes", "ranks"],
                                    ["10x10"], CLASSIFY)  # fmt: skip
    runs = plan.family_runs("classify", configs, block=3)
    assert labels(runs) == [
        "sequential 1 worker",
        "threads 2 workers",
        "threads 4 workers",
        "processes 2 workers",
        "processes 4 workers",
        "ranks 2 ranks x 1 thread",
        "ranks 2 ranks x 2 threads",
    ]
    assert labels(plan.family_runs("classify", configs, block=4)) == labels(runs)[::-1]


def test_families_group_configurations_by_their_family_keys():
    tinycnn = {**TINYCNN, "filters": [8, 16], "seeds": [0, 1]}
    configs = plan.tinycnn_configs(["numpy", "numba"], tinycnn)
    families = plan.families(configs, "train")
    assert families == [
        {"filters": "8", "batch": "32", "seed": "0"},
        {"filters": "8", "batch": "32", "seed": "1"},
        {"filters": "16", "batch": "32", "seed": "0"},
        {"filters": "16", "batch": "32", "seed": "1"},
    ]
    for family in families:
        members = [c for c in configs if plan.family_of(c, "train") == tuple(family.values())]
        assert len(members) == 1 + 3  # numpy at 1 thread, numba at each count


@pytest.mark.parametrize("name", list(registry.ENGINES))
def test_every_engine_gets_a_run_with_its_layout(name: str):
    configs = plan.tinycnn_configs([name], TINYCNN)
    engine = registry.ENGINES[name]
    assert configs, name
    runs = plan.family_runs("train", configs, block=1)
    assert len(runs) == (1 if engine.switches_threads else len(configs))
    for config in configs:
        assert config["threads"] % config["ranks"] == 0
        assert (config["ranks"] > 1) == engine.ranks


def test_an_interleaved_command_names_each_count_and_one_directory_per_count():
    configs = plan.tinycnn_configs(["numba"], TINYCNN)
    (run,) = plan.family_runs("train", configs, block=1)
    argv = plan.train_argv(run, "out/threads~{threads}", CONFIG, block=1)
    assert argv[:2] == ["cnnpar", "train"]
    assert argv[argv.index("--threads") + 1] == "1,2,4"
    assert argv[argv.index("--time-budget") + 1] == "1.0"
    assert argv[argv.index("--block") + 1] == "1"
    assert argv[-2:] == ["--out", "out/threads~{threads}"]


def test_a_full_length_run_has_no_budget_and_the_configured_epochs():
    (config,) = plan.tinycnn_configs(["numpy"], TINYCNN)
    argv = plan.train_argv(plan.Run("train", (config,)), "out", CONFIG, block=None)
    assert "--time-budget" not in argv and "--block" not in argv
    assert argv[argv.index("--epochs") + 1] == "2"


def test_a_ranked_run_starts_under_the_cluster_launcher_only_when_one_is_named():
    configs = plan.tinycnn_configs(["torch-ddp"], {**TINYCNN, "threads": [2]})
    (run,) = plan.family_runs("train", configs, block=1)
    local = plan.train_argv(run, "out", CONFIG, block=1)
    assert local[:2] == ["cnnpar", "train"]
    assert local[local.index("--ranks") + 1] == "2" and local[local.index("--threads") + 1] == "1"
    srun = plan.train_argv(run, "out", CONFIG, block=1, launcher="srun --kill-on-bad-exit=1")
    assert srun[:6] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=1", "-n", "2", "cnnpar"]
    (serial,) = plan.tinycnn_configs(["numpy"], TINYCNN)
    argv = plan.train_argv(plan.Run("train", (serial,)), "o", CONFIG, block=1, launcher="srun")
    assert argv[0] == "cnnpar"  # one process: no launcher


def test_classify_commands_lay_the_cores_out_by_mode():
    configs = plan.classify_configs(["processes", "ranks"], ["20x30"], {**CLASSIFY, "workers": [2]})
    processes, ranks = plan.family_runs("classify", configs, block=1)
    argv = plan.classify_argv(processes, "out", "w.pt", CONFIG, block=1)
    assert argv[argv.index("--rows") + 1] == "20" and argv[argv.index("--cols") + 1] == "30"
    assert argv[argv.index("--workers") + 1] == "2" and "--ranks" not in argv
    assert argv[argv.index("--repeats") + 1] == "3"
    argv = plan.classify_argv(ranks, "out", "w.pt", CONFIG, block=1)
    assert argv[argv.index("--ranks") + 1] == "2" and argv[argv.index("--threads") + 1] == "1"


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_a_paired_classification_is_budgeted_and_the_whole_mosaic_s_is_not():
    (c,) = plan.classify_configs(["threads"], ["20x30"], {**CLASSIFY, "workers": [2]})
    run = plan.Run("classify", (c,))
    paired = plan.classify_argv(run, "out", "w.pt", CONFIG, block=2)
    assert flag(paired, "--time-budget") == "1.0" and flag(paired, "--repeats") == "3"
    assert flag(paired, "--block") == "2"
    whole = plan.classify_argv(run, "out", "w.pt", CONFIG, block=None)
    assert "--time-budget" not in whole and "--block" not in whole
    assert flag(whole, "--repeats") == "1"
    # A config without a budget (null) classifies whole passes in its paired runs too.
    unbudgeted = {**CONFIG, "classify": {**CLASSIFY, "time_budget": None}}
    assert "--time-budget" not in plan.classify_argv(run, "out", "w.pt", unbudgeted, block=1)


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (["sequential", "threads", "processes"], ("threads", 4)),  # the widest worker count
        (["sequential", "processes"], ("sequential", 1)),  # no threads mode: one worker
    ],
)
def test_the_whole_mosaic_is_classified_once_per_grid_and_seed(modes, expected):
    c = plan.full_classify_config(modes, "1000x1000", 2, {**CLASSIFY, "batch_sizes": [64, 256]})
    assert (c["mode"], c["workers"]) == expected
    assert (c["ranks"], c["grid"], c["batch"], c["seed"]) == (1, "1000x1000", 64, 2)


def test_the_cost_of_a_budgeted_classification_is_its_budget_however_large_the_grid():
    from cnnpar.study import cost

    small = cost.classify_run_s("threads", 2, 100, repeats=3, budget=1.0)
    assert small == cost.classify_run_s("threads", 2, 100, repeats=3)  # done before the budget
    huge = cost.classify_run_s("threads", 2, 10**6, repeats=3, budget=1.0)
    assert huge == pytest.approx(cost.RUN_START_S + 1.0)
    assert cost.classify_run_s("threads", 2, 10**6, repeats=3) > huge + 10


def test_the_estimate_counts_a_whole_mosaic_classification_per_grid_and_seed(tmp_path):
    from cnnpar.study import cost

    templates = {
        name: f"{tmp_path}/{name}/{{block}}.tsv"
        for name in ("train_family", "train_gpu", "classify_family", "classify_gpu")
    }
    templates["train_tinycnn_full"] = f"{tmp_path}/full/{{engine}}.tsv"
    templates["train_mosaicnet"] = f"{tmp_path}/mosaicnet/{{seed}}.tsv"
    templates["classify_full"] = f"{tmp_path}/classify_full/{{grid}}/{{seed}}.tsv"
    classify = {**CLASSIFY, "workers": [1, 2], "seeds": [0, 1]}
    mosaicnet = {"threads": 2, "epochs": 1, "train_size": 60000}
    config = {
        **CONFIG,
        "blocks": 1,
        "train": {"tinycnn": {**TINYCNN, "threads": [1, 2]}, "mosaicnet": mosaicnet},
        "classify": classify,
    }
    grids = ["20x30", "1000x1000"]

    def estimate(budget: float | None) -> cost.Estimate:
        config["classify"] = {**classify, "time_budget": budget}
        return cost.estimate_study(config, ["numpy"], ["threads"], grids, templates, tmp_path)

    budgeted, unbudgeted = estimate(1.0), estimate(None)
    # one numpy full-length run, a MosaicNet per seed, a whole-mosaic run per grid and seed
    assert budgeted.other_jobs == 1 + 2 + 2 * 2
    big = cost.classify_full_s("threads", 2, 10**6)
    assert budgeted.other_s > 2 * big  # both seeds' 1000x1000 mosaics, whole
    assert budgeted.block_s < unbudgeted.block_s  # the paired runs stop on the budget


def test_common_options_carry_the_lock_label_and_mirrors_only_when_set():
    assert "--timing-lock" not in plan.common_options(CONFIG)
    assert "--machine-label" not in plan.common_options(CONFIG)
    config = {
        **CONFIG,
        "data": {"source": "download", "dir": None, "mirror": ["https://a/", "file:///b c/"]},
        "timing": {**CONFIG["timing"], "lock": "/locks/t.lock"},
        "machine_label": "laptop",
    }
    options = plan.common_options(config)
    assert options[:6] == ["--data-source", "download", "--mirror", "https://a/", "--mirror",
                           "file:///b c/"]  # fmt: skip
    assert options[options.index("--timing-lock") + 1] == "/locks/t.lock"
    assert options[-2:] == ["--machine-label", "laptop"]


def test_a_throughput_run_may_run_every_epoch_its_budget_fits():
    assert plan.throughput_epochs({**TINYCNN, "time_budget": 1.0, "train_size": 60000}) == 167
    assert plan.throughput_epochs({**TINYCNN, "time_budget": 0.001, "epochs": 5}) == 5


# --- 'auto': a sweep sized to the cores a job can use -----------------------------------------


@pytest.mark.parametrize(
    ("cores", "max_threads", "cpus", "usable"),
    [
        (8, None, 8, 8),  # the card's `snakemake --cores 8` on an 8-core machine
        (8, None, 2, 2),  # ... on a 2-core one
        (1, None, 16, 1),  # --cores 1
        (16, None, 16, 16),
        (8, 4, 16, 4),  # --max-threads caps every job
        (None, None, 2, 2),  # a cluster submitter with no cap: this machine's CPUs
        (None, 32, 2, 32),  # a cluster profile's --max-threads: the cores a job is given
    ],
)
def test_usable_cores_are_the_smallest_cap(cores, max_threads, cpus, usable):
    assert plan.usable_cores(cores, max_threads, cpus) == usable


@pytest.mark.parametrize(
    ("usable", "counts", "ranks"),
    [
        (1, [1], []),
        (2, [1, 2], [2]),
        (6, [1, 2, 4, 6], [2, 4, 6]),
        (8, [1, 2, 4, 8], [2, 4, 8]),
        (16, [1, 2, 4, 8, 16], [2, 4, 8, 16]),
    ],
)
def test_auto_counts_are_powers_of_two_and_the_usable_count(usable, counts, ranks):
    assert plan.auto_counts(usable) == counts
    assert plan.auto_ranks(usable) == ranks


def _auto_config() -> dict:
    return {
        "train": {
            "tinycnn": {**TINYCNN, "threads": "auto", "ranks": "auto"},
            "mosaicnet": {"threads": "auto"},
        },
        "classify": {**CLASSIFY, "workers": "auto", "ranks": "auto"},
    }


@pytest.mark.parametrize("usable", [1, 2, 8, 16])
def test_the_default_sweep_expands_for_every_core_count_without_needing_those_cores(usable):
    config = _auto_config()
    expanded = plan.expand_sweep(config, usable)
    assert set(expanded) == {"train.tinycnn.threads", "train.tinycnn.ranks", "classify.workers",
                             "classify.ranks", "train.mosaicnet.threads"}  # fmt: skip
    assert config["train"]["tinycnn"]["threads"] == plan.auto_counts(usable)
    assert config["classify"]["workers"] == plan.auto_counts(usable)
    assert config["train"]["mosaicnet"]["threads"] == usable
    configs = plan.tinycnn_configs(["numpy", "numba", "torch-ddp"], config["train"]["tinycnn"])
    widest = max(c["threads"] for c in configs)
    assert widest == usable  # the sweep reaches every usable core, never beyond
    ddp = [(c["ranks"], c["threads"]) for c in configs if c["engine"] == "torch-ddp"]
    if usable == 1:
        assert ddp == []  # no rank count fits one core: skipped with a warning
    else:
        assert (2, 2) in ddp and all(t % r == 0 and t <= usable for r, t in ddp)


def test_explicit_lists_are_kept_as_written():
    config = _auto_config()
    config["train"]["tinycnn"]["threads"] = [1, 3]
    config["train"]["mosaicnet"]["threads"] = 2
    expanded = plan.expand_sweep(config, 8)
    assert config["train"]["tinycnn"]["threads"] == [1, 3]
    assert config["train"]["mosaicnet"]["threads"] == 2
    assert "train.tinycnn.threads" not in expanded and "classify.workers" in expanded
