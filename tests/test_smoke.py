"""The smoke check's verdict on its ranks' reports (stand-in reports written here, as the smoke step writes them)."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.smoke import check_reports


def write_reports(folder: Path, hosts: int, tasks: int, gpus: list[str] | None, all_reduce: object) -> Path:
    """Stand-in reports of ``hosts`` x ``tasks`` ranks; ``gpus`` each rank sees (None: one bound GPU each)."""
    world = hosts * tasks
    for rank in range(world):
        report = {
            "rank": rank,
            "world_size": world,
            "host": f"node{rank // tasks}",
            "master_addr": "node0",
            "visible_gpus": gpus if gpus is not None else ["0"],
            "all_reduce": all_reduce if all_reduce != "sum" else float(world * (world - 1) / 2),
        }
        (folder / f"rank-{rank}.json").write_text(json.dumps(report))
    return folder


def check(folder: Path, hosts: int, tasks: int, gpus_per_node: int) -> list[str]:
    return check_reports(folder, world_size=hosts * tasks, nodes=hosts, gpus_per_node=gpus_per_node)


def test_a_skipped_all_reduce_fails_the_smoke(tmp_path):
    """It passed when torch was missing and the collective never ran."""
    write_reports(tmp_path, 2, 1, [], "skipped: torch is not installed in the step's environment")
    problems = check(tmp_path, 2, 1, 0)
    assert len(problems) == 2 and all("the all-reduce did not run" in p and "install torch" in p for p in problems)


def test_the_gpus_seen_are_compared_with_the_profile(tmp_path):
    """ "At least one GPU visible" passed a node of 4 GPUs on a profile of 8."""
    four = [str(i) for i in range(4)]
    write_reports(tmp_path, 2, 8, four, "sum")
    problems = check(tmp_path, 2, 8, 8)
    assert problems == [
        f"node{n}: its tasks see 4 GPU(s), the cluster profile says gpus_per_node=8; fix gpus_per_node in the "
        "profile, or the partition (--partition) it names"
        for n in range(2)
    ]
    assert check(write_reports(tmp_path, 2, 8, [str(i) for i in range(8)], "sum"), 2, 8, 8) == []
    assert check(write_reports(tmp_path, 2, 8, None, "sum"), 2, 8, 8) == [], "one bound GPU per task, renumbered"
