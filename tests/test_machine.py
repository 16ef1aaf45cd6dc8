"""The machine identity: what makes two jobs' timings comparable, and how records carry it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cnnpar.cli import main
from cnnpar.measure.machine import Machine, check_label, this_machine
from cnnpar.record import SCHEMA_VERSION, Parallelism, RunRecord


def test_two_nodes_of_one_type_are_one_machine_and_a_label_or_cpus_tell_apart():
    a = Machine("Xeon 6248", 40, 187, None, hostname="node01")
    b = Machine("Xeon 6248", 40, 187, None, hostname="node02")
    assert a.key == b.key
    assert Machine("Xeon 6248", 40, 187, None, label="turbo-off").key != a.key
    assert Machine("Xeon 6248", 1, 187, None).key != a.key
    assert Machine("EPYC 7742", 40, 187, None).key != a.key
    assert Machine("Xeon 6248", 40, 187, "A100").key != a.key
    assert (
        Machine("Xeon 6248", 40, 187, None, label="turbo-off").name
        == "turbo-off (Xeon 6248, 40 CPUs, 187 GiB)"
    )


def test_this_machine_reads_the_affinity_and_whole_gib():
    here = this_machine("ci")
    assert here.cpus == len(os.sched_getaffinity(0))
    assert here.label == "ci" and isinstance(here.memory_gib, int)


@pytest.mark.parametrize("bad", ["", "   ", "a|b", "x" * 65, "two\nlines"])
def test_bad_labels_are_refused(bad):
    with pytest.raises(ValueError, match="machine label"):
        check_label(bad)


def _record(**kwargs) -> RunRecord:
    env = {"cpu_model": "Old CPU", "cpus_available": 4, "ram_gib": 15.6, "cuda_device": None,
           "hostname": "h"}  # fmt: skip
    return RunRecord("train", "tinycnn", {"threads": 1}, Parallelism(1, 1), {}, [], env, **kwargs)


def test_the_record_carries_the_machine_and_reads_version_2_records(tmp_path: Path):
    record = _record(machine=Machine("New CPU", 2, 8, None, label="lab"))
    back = RunRecord.read(record.write(tmp_path / "new"))
    assert back.machine == record.machine and back.schema_version == SCHEMA_VERSION == 3
    assert back.columns()["machine"] == record.machine.key
    # A version 2 record (no machine) gets its identity from its environment.
    data = _record().to_dict()
    data.pop("machine")
    data["schema_version"] = 2
    (tmp_path / "old").mkdir()
    (tmp_path / "old/run.json").write_text(json.dumps(data))
    old = RunRecord.read(tmp_path / "old/run.json")
    assert old.machine == Machine("Old CPU", 4, 16, None, hostname="h")


def test_machine_label_option_is_checked_before_any_work(tmp_path: Path, capsys):
    code = main(["train", "--out", str(tmp_path / "o"), "--machine-label", "a|b"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--machine-label" in err[0] and "'|'" in err[0]
    assert not (tmp_path / "o").exists()
