"""Distributed launch the way XTuner users run it, and a bundle to take a job to a cluster.

One GPU: ``xtuner train CONFIG``. Several: ``NPROC_PER_NODE=N xtuner train CONFIG --deepspeed
deepspeed_zero2``, and across machines ``NNODES``, ``NODE_RANK``, ``ADDR`` and ``PORT``: XTuner's own
launcher turns these into a ``torchrun`` command. On Slurm: ``srun … xtuner train CONFIG --launcher
slurm``. Nothing here launches anything itself.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuner.models import is_embedded, resolve_model
from tuner.spec import TrainSpec, render_config


@dataclass(frozen=True)
class Cluster:
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def launch_environment(gpus_per_node: int, cluster: Cluster | None = None) -> dict[str, str]:
    """The variables XTuner's ``xtuner train`` reads to start torchrun (empty for one GPU)."""
    cluster = cluster or Cluster()
    if gpus_per_node <= 1 and cluster.nnodes <= 1:
        return {}
    env = {"NPROC_PER_NODE": str(gpus_per_node)}
    if cluster.nnodes > 1:
        env.update(NNODES=str(cluster.nnodes), NODE_RANK=str(cluster.node_rank),
                   ADDR=cluster.master_addr, PORT=str(cluster.master_port))
    return env


def xtuner_arguments(config: str, spec: TrainSpec, work_dir: str | None = None,
                     resume_from: str | None = None) -> list[str]:
    """What follows ``xtuner train`` (or XTuner's train.py under torchrun)."""
    arguments = [config]
    if work_dir:
        arguments += ["--work-dir", work_dir]
    arguments += ["--seed", str(spec.seed)]
    if spec.deepspeed != "none":
        arguments += ["--deepspeed", spec.deepspeed]
    if resume_from:
        arguments += ["--resume", resume_from]
    return arguments


def train_command(config: Path, work_dir: Path, spec: TrainSpec, resume_from: Path | None = None,
                  cluster: Cluster | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``xtuner train`` command line and the environment XTuner's launcher reads."""
    arguments = xtuner_arguments(str(config), spec, str(work_dir), str(resume_from) if resume_from else None)
    return ["xtuner", "train", *arguments], launch_environment(spec.gpus, cluster)


def shell_command(command: list[str], env: dict[str, str]) -> str:
    prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
    return (prefix + " " if prefix else "") + shlex.join(command)


def torchrun_command(config: str, spec: TrainSpec, cluster: Cluster | None = None,
                     train_script: str = "$XTUNER_TRAIN", work_dir: str | None = None) -> list[str]:
    """The torchrun line XTuner's launcher runs for these settings, spelled out."""
    cluster = cluster or Cluster()
    return ["torchrun", f"--nnodes={cluster.nnodes}", f"--node_rank={cluster.node_rank}",
            f"--nproc_per_node={spec.gpus}", f"--master_addr={cluster.master_addr}",
            f"--master_port={cluster.master_port}", train_script,
            *xtuner_arguments(config, spec, work_dir), "--launcher", "pytorch"]


def slurm_script(config: str, spec: TrainSpec, nnodes: int, job_name: str, work_dir: str = "work_dir") -> str:
    arguments = shlex.join(xtuner_arguments(config, spec, work_dir) + ["--launcher", "slurm"])
    return f"""#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nnodes}
#SBATCH --ntasks-per-node={spec.gpus}
#SBATCH --gres=gpu:{spec.gpus}
#SBATCH --cpus-per-task=8
# Submit from this folder: sbatch launch_slurm.sbatch  (add -p PARTITION as your cluster needs)
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-.}}"
srun xtuner train {arguments}
"""


def torchrun_script(config: str, spec: TrainSpec, nnodes: int, work_dir: str = "work_dir") -> str:
    env = launch_environment(spec.gpus, Cluster(nnodes=nnodes))
    env_text = " ".join(f"{key}={value}" for key, value in env.items()
                        if key not in ("NODE_RANK", "ADDR", "PORT"))
    if nnodes > 1:
        env_text += ' NODE_RANK="$NODE_RANK" ADDR="$ADDR" PORT="${PORT:-29500}"'
    torchrun = shlex.join(torchrun_command(config, spec, Cluster(nnodes=nnodes, node_rank=0),
                                           work_dir=work_dir))
    usage = ("Run on every node: NODE_RANK=<0..{n}> ADDR=<address of node 0> ./launch_torchrun.sh"
             .format(n=nnodes - 1) if nnodes > 1 else "Run: ./launch_torchrun.sh")
    needs = ': "${NODE_RANK:?set NODE_RANK}" "${ADDR:?set ADDR to node 0}"\n' if nnodes > 1 else ""
    return f"""#!/bin/bash
# {usage}
# XTuner's launcher runs, on each node, the equivalent of:
#   XTUNER_TRAIN=$(python -c 'import xtuner.tools.train as t; print(t.__file__)')
#   {torchrun.replace('--node_rank=0', '--node_rank=$NODE_RANK')}
set -euo pipefail
cd "$(dirname "$0")"
{needs}{env_text + ' ' if env_text else ''}xtuner train {shlex.join(xtuner_arguments(config, spec, work_dir))}
"""


def export_cluster_bundle(job, out_dir: Path, nnodes: int = 1, gpus_per_node: int | None = None,
                          include_model: bool | None = None) -> Path:
    """A folder with config, data and ready-to-run torchrun and Slurm scripts for ``nnodes`` nodes.

    The config refers to the data by relative paths, so the folder can be copied anywhere. The
    embedded model is copied in (270 MB); a hub id stays a hub id; a local folder is copied only
    with ``include_model``.
    """
    spec = job.spec()
    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    data_files = []
    for source in map(Path, spec.data_files):
        shutil.copyfile(source, out_dir / "data" / source.name)
        data_files.append(f"data/{source.name}")
    sums = Path(spec.data_files[0]).parent / "SHA256SUMS"
    if sums.exists():
        shutil.copyfile(sums, out_dir / "data" / "SHA256SUMS")
    spec = spec.replace(data_files=data_files, gpus=gpus_per_node or spec.gpus)
    model = spec.model
    copy_model = is_embedded(model) if include_model is None else include_model
    if copy_model:
        shutil.copytree(resolve_model(model), out_dir / "model", dirs_exist_ok=True)
        model = "./model"
    spec.save(out_dir / "spec.json")
    (out_dir / "config.py").write_text(render_config(spec, "config.py", model_path=model), encoding="utf-8")
    scripts = {"launch_torchrun.sh": torchrun_script("config.py", spec, nnodes),
               "launch_slurm.sbatch": slurm_script("config.py", spec, nnodes, f"xtuner-{job.id}"[:60])}
    for name, text in scripts.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        (out_dir / name).chmod(0o755)
    root = Path(__file__).resolve().parent.parent
    for requirements in ("requirements.txt", "requirements-nodeps.txt"):
        if (root / requirements).exists():
            shutil.copyfile(root / requirements, out_dir / requirements)
    (out_dir / "README.md").write_text(_bundle_readme(job.id, spec, nnodes), encoding="utf-8")
    return out_dir


def _bundle_readme(job_id: str, spec: TrainSpec, nnodes: int) -> str:
    return f"""# XTuner job {job_id}, ready for a cluster

{nnodes} node(s) × {spec.gpus} GPU(s), DeepSpeed: {spec.deepspeed}, model: {spec.model}.

1. On every node: `pip install -r requirements.txt && pip install --no-deps -r requirements-nodeps.txt`
   (and `pip install deepspeed` when DeepSpeed is used), then copy this folder to the same path.
2. Start it:
   - with torchrun (through XTuner's launcher): `./launch_torchrun.sh` on each node
     {'(set NODE_RANK and ADDR)' if nnodes > 1 else ''}
   - with Slurm: `sbatch launch_slurm.sbatch`
3. Checkpoints land in `work_dir/`. Resume: add `--resume work_dir/iter_N.pth` to the xtuner line.
4. Adapter: `xtuner convert pth_to_hf config.py work_dir/iter_N.pth adapter --safe-serialization`

`data/SHA256SUMS` lets you check the data arrived intact: `cd data && sha256sum -c SHA256SUMS`.
"""
