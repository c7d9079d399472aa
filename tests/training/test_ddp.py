"""Distributed training that has actually run: Lightning DDP on CPU (gloo), two processes.

Each run goes through the real command line (`fashion-tagger train ... --strategy ddp`) in a
launcher script that adds one observer and changes nothing else:

- a Lightning callback records, per process, its rank, the train images of each of its batches
  (a hash of the pixels), how many validation images it saw and the validation metrics it
  ended each epoch with;
- a Python audit hook (`sys.addaudithook`) records every file the process opens for writing,
  renames or removes under the run dir, and every image it reads from the dataset dir.

From those records the tests check what the issue asks: each rank saw its own shard, the
validation metrics are reduced over both ranks, only rank 0 writes the run dir, the decoded
image cache is built once, and `--resume` continues a killed two-node run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from run_fixtures import make_synthetic_dataset

from fashion_tagger.dataset.core import Dataset

N_TRAIN, N_VAL, N_TEST = 64, 16, 16
BATCH = 8
EPOCHS = 2
STEPS_PER_EPOCH = N_TRAIN // 2 // BATCH  # per rank: half the train split
KILL_AT = STEPS_PER_EPOCH + 1  # the global step of the kill: mid second epoch

LAUNCHER = r'''
"""Runs the fashion-tagger CLI with an observer (see tests/training/test_ddp.py)."""
import atexit, hashlib, json, os, sys

RUN = os.path.abspath(os.environ["PROBE_RUN"])
IMAGES = os.path.join(os.path.abspath(os.environ["PROBE_DATA"]), "images")
OUT = os.environ["PROBE_OUT"]
STOP_AT = int(os.environ.get("PROBE_STOP_AT", "0"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
record = {"pid": os.getpid(), "writes": [], "image_reads": [], "train": {}, "val_seen": {},
          "val_metrics": [], "steps": []}


def _path(p):
    if isinstance(p, bytes):
        p = p.decode(errors="replace")
    return os.path.abspath(p) if isinstance(p, str) else None


def hook(event, args):
    if event == "open":
        path, flags = _path(args[0]), args[2]
        if path is None or not isinstance(flags, int):
            return
        if flags & WRITE_FLAGS and path.startswith(RUN):
            record["writes"].append(["open", path])
        elif not flags & WRITE_FLAGS and path.startswith(IMAGES):
            record["image_reads"].append(path)
    elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "shutil.rmtree"):
        path = _path(args[1] if event in ("os.rename", "os.replace") else args[0])
        if path is not None and path.startswith(RUN):
            record["writes"].append([event, path])


def dump():
    with open(os.path.join(OUT, f"probe-{os.getpid()}.json"), "w") as f:
        json.dump(record, f)


sys.addaudithook(hook)
atexit.register(dump)

import lightning.pytorch as pl


class Probe(pl.Callback):
    def setup(self, trainer, module, stage):
        record.update(rank=trainer.global_rank, local_rank=trainer.local_rank,
                      node_rank=trainer.node_rank, world_size=trainer.world_size)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if STOP_AT and trainer.global_step >= STOP_AT:  # a kill, after a checkpoint
            dump()
            os._exit(17)
        record["steps"].append(trainer.global_step)
        x = batch[0].detach().cpu().numpy()
        record["train"].setdefault(str(trainer.current_epoch), []).extend(
            hashlib.sha1(img.tobytes()).hexdigest()[:16] for img in x)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        key = str(trainer.current_epoch)
        record["val_seen"][key] = record["val_seen"].get(key, 0) + len(batch[0])

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            record["val_metrics"].append({k: float(v) for k, v in trainer.callback_metrics.items()
                                          if k.startswith("val_acc")})


_init = pl.Trainer.__init__


def _with_probe(self, *args, **kwargs):
    kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), Probe()]
    _init(self, *args, **kwargs)


pl.Trainer.__init__ = _with_probe

from fashion_tagger.cli import main

main()
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """96 synthetic images with fixed splits: 64 train, 16 val, 16 test (even per rank)."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("ddp") / "ds", n=96, seed=5)
    ds = Dataset.open(root)
    splits = ["train"] * N_TRAIN + ["val"] * N_VAL + ["test"] * N_TEST
    table = ds.table.set_column(
        ds.table.column_names.index("split"), "split", pa.array(splits, pa.string())
    )
    ds.with_table(table).save()
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, run: Path, data: Path, args: list[str], **env: str) -> subprocess.Popen:
    launcher = tmp / "launch_train.py"
    launcher.write_text(LAUNCHER)
    probes = tmp / "probes"
    probes.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "PROBE_RUN": str(run),
        "PROBE_DATA": str(data),
        "PROBE_OUT": str(probes),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "GLOO_SOCKET_IFNAME": "lo",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(launcher), "train", *args],
        env=full_env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


def _probes(tmp: Path) -> list[dict]:
    """The records of every process of the last launch (and clear them for the next)."""
    found = []
    for p in sorted((tmp / "probes").glob("probe-*.json")):
        found.append(json.loads(p.read_text()))
        p.unlink()
    return sorted(found, key=lambda r: r.get("rank", 99))


TRAIN_ARGS = [
    "--accelerator", "cpu", "--strategy", "ddp", "--epochs", str(EPOCHS),
    "--batch-size", str(BATCH), "--image-size", "32", "--hidden", "32", "--lr", "3e-3",
    "--workers", "0", "--no-progress", "--class-weights", "none",
]  # fmt: skip


def _val_accuracy(run: Path, dataset: Path) -> tuple[float, float, float]:
    """Leaf accuracy of the saved model on the val split: all, even rows, odd rows (the
    shards of rank 0 and rank 1 under Lightning's unshuffled DistributedSampler)."""
    from fashion_tagger.inference.tagger import Tagger

    ds = Dataset.open(dataset).split("val")
    tagger = Tagger.load(run, backend="torch")
    preds = tagger.predict([ds.image_path(i) for i in range(len(ds))])
    hits = np.array([p.labels == list(t) for p, t in zip(preds, ds.labels, strict=True)])
    return float(hits.mean()), float(hits[0::2].mean()), float(hits[1::2].mean())


def _check_only_rank0_writes(records: list[dict]) -> None:
    for r in records:
        if r.get("rank") != 0:
            assert r["writes"] == [], f"rank {r.get('rank')} wrote to the run dir: {r['writes']}"


@pytest.mark.slow
def test_two_devices_on_one_node(dataset: Path, tmp_path: Path) -> None:
    """`train --accelerator cpu --devices 2 --strategy ddp`: a run dir, from two processes."""
    from fashion_tagger.model import RunDir

    run = tmp_path / "run"
    proc = _launch(tmp_path, run, dataset, [str(dataset), "--out", str(run), *TRAIN_ARGS,
                                            "--devices", "2"])  # fmt: skip
    code, out = _finish(proc)
    assert code == 0, out[-3000:]
    records = _probes(tmp_path)
    assert [r.get("rank") for r in records] == [0, 1], out[-3000:]
    assert {r["world_size"] for r in records} == {2}

    # one loadable run dir
    loaded = RunDir.open(run)
    assert (run / "model.json").is_file() and (run / "model.safetensors").is_file()
    assert loaded.config["training"]["global_step"] == EPOCHS * STEPS_PER_EPOCH

    # each rank saw its own shard of the train split, every epoch
    for epoch in map(str, range(EPOCHS)):
        r0, r1 = (set(r["train"][epoch]) for r in records)
        assert len(r0) == len(r1) == N_TRAIN // 2
        assert not r0 & r1
        assert len(r0 | r1) == N_TRAIN

    # validation: each rank scored half the split, and both ended with the same metrics,
    # which are those of the whole split
    for r in records:
        assert r["val_seen"] == {str(e): N_VAL // 2 for e in range(EPOCHS)}
    assert records[0]["val_metrics"] == records[1]["val_metrics"]
    full, _even, _odd = _val_accuracy(run, dataset)
    assert loaded.config["metrics"]["val_acc_leaf"] == pytest.approx(full, abs=1e-6)

    # the decoded-image cache was built once: every image read once, by one process
    reads = [p for r in records for p in r["image_reads"]]
    assert len(reads) == len(set(reads)) == N_TRAIN + N_VAL
    assert sum(bool(r["image_reads"]) for r in records) == 1

    _check_only_rank0_writes(records)


@pytest.mark.slow
def test_two_nodes_killed_then_resumed(dataset: Path, tmp_path: Path) -> None:
    """Two processes as two nodes on 127.0.0.1 (Lightning's MASTER_ADDR, MASTER_PORT,
    NODE_RANK), killed mid second epoch, then `train --resume` finishes the run."""
    from fashion_tagger.model import RunDir

    run = tmp_path / "run"
    args = [*TRAIN_ARGS, "--devices", "1", "--num-nodes", "2", "--checkpoint-every", "1"]

    def nodes(cli_args: list[str], **env: str) -> list[tuple[int, str]]:
        port = str(_free_port())
        procs = [
            _launch(tmp_path, run, dataset, cli_args, MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=port, NODE_RANK=str(rank), WORLD_SIZE="2", **env)
            for rank in (0, 1)
        ]  # fmt: skip
        return [_finish(p) for p in procs]

    results = nodes([str(dataset), "--out", str(run), *args], PROBE_STOP_AT=str(KILL_AT))
    assert [c for c, _ in results] == [17, 17], results[0][1][-3000:] + results[1][1][-3000:]
    killed = _probes(tmp_path)
    assert [(r["rank"], r["node_rank"]) for r in killed] == [(0, 0), (1, 1)]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "model.json").exists()
    _check_only_rank0_writes(killed)

    results = nodes(["--resume", str(run), "--no-progress"])
    assert [c for c, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    resumed = _probes(tmp_path)
    assert [r["rank"] for r in resumed] == [0, 1]
    # it continued from the checkpoint of the kill's step: only the steps after it ran
    for r in resumed:
        assert r["steps"] == list(range(KILL_AT, EPOCHS * STEPS_PER_EPOCH))
    loaded = RunDir.open(run)
    assert loaded.config["training"]["global_step"] == EPOCHS * STEPS_PER_EPOCH
    full, _, _ = _val_accuracy(run, dataset)
    assert loaded.config["metrics"]["val_acc_leaf"] == pytest.approx(full, abs=1e-6)
    _check_only_rank0_writes(resumed)
