"""train.py under torchrun on two "nodes" (two torchrun processes on loopback,
gloo): the rendezvous comes from torchrun's environment, the ranks agree on
the data order and the stop, and the result equals train.py --world-size 2."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import PROJECT_DIR, TINY_MODEL_ARGS, run_script, small_manifest_dir

TRAIN = "pruned_transducer_stateless4/train.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_args(exp_dir: Path, manifest_dir: Path) -> list[str]:
    return ["--exp-dir", str(exp_dir), "--bpe-model", "data/lang_bpe_100/bpe.model",
            "--manifest-dir", str(manifest_dir),
            "--num-epochs", "1", "--max-duration", "8", "--num-buckets", "10",
            "--num-workers", "0", "--enable-musan", "false", "--valid-interval", "1000",
            "--valid-wer-utts", "4", "--model-warm-step", "5", "--average-period", "3",
            "--save-every-n", "0", "--num-threads", "1", "--tensorboard", "false",
            *TINY_MODEL_ARGS]


def checksums(exp_dir: Path) -> dict[str, str]:
    text = "".join(p.read_text() for p in (exp_dir / "log").glob("log-train-*"))
    return dict(re.findall(r"rank (\d+) final parameter checksum (\S+)", text))


@pytest.mark.slow
def test_torchrun_two_nodes_equals_world_size_2(prepared_dir: Path):
    port = free_port()
    # 40 cuts (about 2 minutes of audio): a dozen batches per epoch
    manifests = small_manifest_dir(prepared_dir, prepared_dir / "exp/multinode_fbank", 40)
    exp_dir = prepared_dir / "exp/torchrun_2_nodes"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LOCAL_RANK", None)
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc-per-node", "1", "--node-rank", str(node), "--master-addr", "127.0.0.1",
             "--master-port", str(port), str(PROJECT_DIR / TRAIN), *train_args(exp_dir, manifests)],
            cwd=prepared_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        for node in (0, 1)
    ]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=600)[0])
        finally:
            node.kill()
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[-3000:] for o in outputs)
    node_sums = checksums(exp_dir)
    assert set(node_sums) == {"0", "1"} and node_sums["0"] == node_sums["1"], node_sums

    spawn_dir = prepared_dir / "exp/world_size_2"
    result = run_script([TRAIN, *train_args(spawn_dir, manifests), "--world-size", "2",
                         "--master-port", str(free_port())], prepared_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checksums(spawn_dir) == node_sums

    torchrun_ckpt, spawn_ckpt = (torch.load(d / "epoch-1.pt", weights_only=False)
                                 for d in (exp_dir, spawn_dir))
    assert torchrun_ckpt["params"]["batch_idx_train"] == spawn_ckpt["params"]["batch_idx_train"]
    assert torchrun_ckpt["params"]["batch_idx_train"] > 3  # past the averaging period
    for key in ("model", "model_avg"):
        for name, tensor in spawn_ckpt[key].items():
            assert torch.equal(torchrun_ckpt[key][name], tensor), (key, name)
