import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.launch import (Cluster, export_cluster_bundle, launch_environment, slurm_script, torchrun_command,
                          train_command)
from tuner.models import EMBEDDED_MODEL
from tuner.spec import spec_for_model


def _spec(gpus, deepspeed="none"):
    return spec_for_model(EMBEDDED_MODEL, data_files=["d.jsonl"], gpus=gpus, deepspeed=deepspeed)


def test_one_gpu_is_a_plain_xtuner_train():
    command, env = train_command(Path("c.py"), Path("w"), _spec(1))
    assert command == ["xtuner", "train", "c.py", "--work-dir", "w", "--seed", "42"] and env == {}


@pytest.mark.parametrize("gpus, deepspeed", [(2, "deepspeed_zero2"), (8, "deepspeed_zero3_offload")])
def test_several_gpus_set_nproc_per_node_and_deepspeed(gpus, deepspeed):
    command, env = train_command(Path("c.py"), Path("w"), _spec(gpus, deepspeed))
    assert env == {"NPROC_PER_NODE": str(gpus)}
    assert command[command.index("--deepspeed") + 1] == deepspeed


def test_two_nodes_set_xtuners_node_variables():
    env = launch_environment(8, Cluster(nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29511))
    assert env == {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "ADDR": "10.0.0.1", "PORT": "29511"}
    line = torchrun_command("c.py", _spec(8, "deepspeed_zero2"), Cluster(2, 1, "10.0.0.1", 29511))
    assert line[:6] == ["torchrun", "--nnodes=2", "--node_rank=1", "--nproc_per_node=8",
                        "--master_addr=10.0.0.1", "--master_port=29511"]
    assert line[-2:] == ["--launcher", "pytorch"]


def test_slurm_script_asks_for_every_gpu_of_every_node():
    text = slurm_script("config.py", _spec(8, "deepspeed_zero2"), 2, "xtuner-job")
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=8" in text and "--gres=gpu:8" in text
    assert "srun xtuner train config.py --work-dir work_dir --seed 42 --deepspeed deepspeed_zero2 --launcher slurm" in text


@pytest.mark.parametrize("gpus, cluster", [(2, Cluster()), (8, Cluster()), (8, Cluster(2, 1, "10.1.1.1", 29555))])
def test_xtuners_own_launcher_runs_the_torchrun_line_we_spell_out(tmp_path, gpus, cluster):
    """The real `xtuner` entry point, with a recording `torchrun` first on PATH (no GPU here)."""
    record = tmp_path / "argv.json"
    fake = tmp_path / "torchrun"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    spec = _spec(gpus, "deepspeed_zero2")
    command, env = train_command(Path("c.py"), Path("w"), spec, cluster=cluster)
    if cluster.nnodes == 1:
        env["PORT"] = "29500"  # XTuner picks a random port when none is given
    xtuner = Path(sys.executable).parent / "xtuner"
    run_env = {**os.environ, **env, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(xtuner), *command[1:]], env=run_env, check=True, capture_output=True, timeout=120)
    recorded = json.loads(record.read_text())
    expected = torchrun_command("c.py", spec, Cluster(cluster.nnodes, cluster.node_rank, cluster.master_addr,
                                                      int(env["PORT"])), train_script="TRAIN", work_dir="w")
    assert recorded[:5] == expected[1:6]
    assert recorded[5].endswith("xtuner/tools/train.py")
    assert recorded[6:] == expected[7:]


def test_cluster_bundle_has_relative_data_and_scripts_for_n_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path / "home"))
    from tuner.jobs import create_job

    data = tmp_path / "d.jsonl"
    data.write_text('{"conversation": [{"input": "hi", "output": "hello"}]}\n' * 4, encoding="utf-8")
    job = create_job(spec_for_model(EMBEDDED_MODEL, data_files=[str(data)]), "bundle")
    out = export_cluster_bundle(job, tmp_path / "bundle", nnodes=2, gpus_per_node=8)
    config = (out / "config.py").read_text()
    assert "data_files = ['data/00-d.jsonl']" in config
    assert "pretrained_model_name_or_path = './model'" in config and (out / "model" / "config.json").exists()
    torchrun = (out / "launch_torchrun.sh").read_text()
    assert "NPROC_PER_NODE=8 NNODES=2" in torchrun and "--nnodes=2" in torchrun
    assert os.access(out / "launch_torchrun.sh", os.X_OK) and os.access(out / "launch_slurm.sbatch", os.X_OK)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out / "data", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert json.loads((out / "spec.json").read_text())["gpus"] == 8
